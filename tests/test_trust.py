"""Nothing lost, nothing silently wrong: one writer per run directory, no non-finite checkpoint, checksummed caches
and run files, a finished run left alone, unknown keys refused, one line for every mistake, signals obeyed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, REPO, compose_config, run_cli
from test_faults import driver

from llmlab.config.errors import ConfigError
from llmlab.rundir import RunDir
from llmlab.store import to_dataclass
from llmlab.train.checkpoint import list_checkpoints
from llmlab.train.run_dir import RunDirLock

SHORT = [*FAST, "trainer.max_steps=8", "trainer.checkpoint_every=4", "trainer.eval_every=4", "monitors=none"]


def one_line_error(result: subprocess.CompletedProcess, expected: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return errors[0]


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but Hydra's record of the latest command, the lock, and run.log (the console
    log every command run there appends to: a refused command adds its error line)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.name not in (RunDir(run_dir).lock.name, "run.log")}


def finished_run(tmp_path_factory, overrides: list[str]) -> tuple[Path, list[str]]:
    """A run of `overrides` trained to completion: its directory and the command's arguments."""
    root = tmp_path_factory.mktemp("finished")
    args = [*overrides, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"]
    result = run_cli("llmlab.run", args, root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run", args


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run that completed: its directory and the command's arguments."""
    return finished_run(tmp_path_factory, SHORT)


# ---- config: numbers must be finite, keys must exist --------------------------------------------------------
@pytest.mark.parametrize("override,expected", [
    ("trainer.lr=nan", "trainer.lr must be a finite number > 0, got nan"),
    ("trainer.lr=inf", "trainer.lr must be a finite number > 0, got inf"),
    ("trainer.beta2=1.0", "trainer.beta2 must be in [0, 1), got 1.0"),
    ("trainer.beta1=-0.5", "trainer.beta1 must be in [0, 1), got -0.5"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay must be >= 0"),
    ("model.context_length=0", "model.context_length must be > 0, got 0"),
    ("+trainer.warmup=100", "trainer.warmup: no such field; did you mean trainer.warmup_steps?"),
    ("+monitors.probe.rows=2", "monitors.probe.rows: no such field (monitors.probe has batch_idx, sequences, tokens)"),
])
def test_a_number_out_of_range_or_an_added_unknown_key_is_one_line(override, expected):
    with pytest.raises(ConfigError) as err:
        to_dataclass(compose_config([override]))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_warmup_longer_than_the_run_is_said_before_training():
    cfg = to_dataclass(compose_config(["trainer.max_steps=10", "trainer.warmup_steps=50", "trainer.lr=1e-3"]))
    assert cfg.surprises() == ["trainer.warmup_steps=50 > trainer.max_steps=10: the learning rate never reaches "
                               "trainer.lr=0.001 (it peaks at 0.0002)"]
    assert to_dataclass(compose_config(["trainer.max_steps=10", "trainer.warmup_steps=10"])).surprises() == []


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["device=cuda:7"], "device=cuda:7: no such device here; this machine has cpu"),
    (["device=auto", "trainer.precision=fp16"], "trainer.precision=fp16 needs CUDA and this run is on cpu"),
    (["trainer.lr=nan"], "trainer.lr must be a finite number > 0, got nan"),
])
def test_cli_mistakes_that_were_tracebacks_are_one_line(tmp_path, args, expected):
    if "cuda" in expected and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(run_cli("llmlab.run", [*SHORT, f"cache_dir={tmp_path}", *args], tmp_path), expected)


@pytest.mark.slow
def test_a_data_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "corpus").mkdir()
    text = [o for o in SHORT if not o.startswith("data.")]
    result = run_cli("llmlab.run", [*text, "data=text", f"data.paths=[{tmp_path / 'corpus'}]"], tmp_path)
    one_line_error(result, f"data.paths: {tmp_path / 'corpus'} is a directory; give its files, or a glob such as")


# ---- one writer per run directory -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_on_a_run_directory_in_use_is_refused_naming_the_holder(finished, tmp_path):
    run_dir, args = finished
    before = files_of(run_dir)
    lock = RunDirLock(run_dir)  # this test process holds it, as a run still training would
    try:
        result = run_cli("llmlab.run", [*args, "trainer.max_steps=12", "trainer.allow_config_change=true"], tmp_path)
    finally:
        lock.release()
    one_line_error(result, f"{run_dir} is in use by another llmlab process (PID {os.getpid()})")
    assert files_of(run_dir) == before


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    RunDir(tmp_path).lock.write_text("999999\n")  # the file stays behind; the kernel's lock does not
    RunDirLock(tmp_path).release()


# ---- a finished run stays as it was -----------------------------------------------------------------------
@pytest.mark.slow
def test_the_same_command_on_a_finished_run_changes_nothing_and_says_so(finished, tmp_path):
    run_dir, args = finished
    before = files_of(run_dir)
    again = run_cli("llmlab.run", args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already completed at step 8; nothing to do" in again.stdout
    assert files_of(run_dir) == before  # metrics.json, metrics.jsonl, TensorBoard, checkpoints: byte for byte


# ---- checksums: caches, the run's tokenizer and config --------------------------------------------------------
def same_command_elsewhere(finished, tmp_path, cache_damage) -> tuple[subprocess.CompletedProcess, Path]:
    """The finished run's command into a new directory, on a copy of its caches damaged by cache_damage."""
    run_dir, args = finished
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-r", str(run_dir.parent / "cache"), str(cache)], check=True)
    cache_damage(cache)
    moved = [a for a in args if not a.startswith(("cache_dir=", "hydra.run.dir="))]
    result = run_cli("llmlab.run", [*moved, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, tmp_path / "run"


@pytest.mark.slow
def test_a_damaged_token_cache_is_encoded_again_and_trains_as_a_clean_one(finished, tmp_path):
    def zero_every_third_id(cache: Path) -> None:
        for stream in (cache / "tokens").glob("*.bin"):
            ids = np.fromfile(stream, dtype=np.uint8 if stream.name.endswith("uint8.bin") else np.uint16)
            ids[::3] = 0
            ids.tofile(stream)

    result, run_dir = same_command_elsewhere(finished, tmp_path, zero_every_third_id)
    assert "does not match its checksum; encoding the text again" in result.stderr
    last = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (finished[0], run_dir)]
    assert last[0]["val/loss"] == last[1]["val/loss"]  # trained on the same tokens as the clean run


@pytest.mark.slow
def test_an_edited_cached_tokenizer_is_trained_again_not_copied_into_the_run(finished, tmp_path):
    def reverse_the_vocabulary(cache: Path) -> None:
        [entry] = (cache / "tokenizers").iterdir()
        manifest = json.loads((entry / "tokenizer.json").read_text())
        manifest["chars"] = manifest["chars"][::-1]  # every id now means another character
        (entry / "tokenizer.json").write_text(json.dumps(manifest))

    result, run_dir = same_command_elsewhere(finished, tmp_path, reverse_the_vocabulary)
    assert "do not match the checksums it was saved with" in result.stderr
    assert "training the tokenizer again" in result.stderr
    tokenizers = [(d / "tokenizer/tokenizer.json").read_bytes() for d in (finished[0], run_dir)]
    assert tokenizers[0] == tokenizers[1]


@pytest.mark.slow
def test_an_edited_tokenizer_in_a_run_stops_resume_and_generate(finished, tmp_path):
    run_dir, args = finished
    work = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run_dir), str(work)], check=True)
    manifest = json.loads((work / "tokenizer/tokenizer.json").read_text())
    manifest["chars"] = manifest["chars"][::-1]
    (work / "tokenizer/tokenizer.json").write_text(json.dumps(manifest))
    expected = "the run's tokenizer file"
    one_line_error(run_cli("llmlab.generate", [f"run={work}", "prompt=a", "max_new_tokens=4"], tmp_path), expected)
    resume = [a for a in args if not a.startswith("hydra.run.dir=")]
    resumed = run_cli("llmlab.run", [*resume, f"hydra.run.dir={work}", "trainer.max_steps=12",
                                     "trainer.allow_config_change=true"], tmp_path)
    one_line_error(resumed, expected)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "garble", "edit"])
def test_a_changed_config_file_cannot_let_another_config_resume_silently(finished, tmp_path, damage):
    run_dir, args = finished
    work = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run_dir), str(work)], check=True)
    config = work / "config_resolved.yaml"
    if damage == "delete":
        config.unlink()
    elif damage == "garble":  # in a run whose checkpoint records no checksum of it (an earlier llmlab's)
        config.write_text("model: [unclosed\n  : :\n")
        for manifest in (work / "checkpoints").glob("step_*/manifest.json"):
            manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items()
                                            if k != "config_sha256"}))
    else:
        config.write_text(config.read_text().replace("lr: 0.003", "lr: 0.3"))
    other = [*(a for a in args if not a.startswith("hydra.run.dir=")), f"hydra.run.dir={work}",
             "trainer.max_steps=10", "trainer.lr=0.3"]
    expected = {"delete": "is missing", "garble": "is not readable YAML", "edit": "was changed after its checkpoint"}
    one_line_error(run_cli("llmlab.run", other, tmp_path), expected[damage])
    if damage == "edit":  # told explicitly, it resumes under the new config
        allowed = run_cli("llmlab.run", [*other, "trainer.allow_config_change=true"], tmp_path)
        assert allowed.returncode == 0 and "resumed from" in allowed.stdout, allowed.stderr[-2000:]


# ---- no non-finite checkpoint --------------------------------------------------------------------------------
@pytest.mark.slow
def test_weights_that_become_infinite_are_never_checkpointed(tmp_path):
    # 1e39 is a finite float64 in the config and infinite in the model's fp32: the first update ruins every weight
    args = [*SHORT, "trainer.lr=1e39", "trainer.warmup_steps=0", "trainer.checkpoint_every=1",
            f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli("llmlab.run", args, tmp_path)
    one_line_error(result, "the weights are not finite after step 1, so it was not checkpointed; the last good "
                           "checkpoint is none", code=1)
    assert list_checkpoints(tmp_path / "run/checkpoints") == []
    assert json.loads((tmp_path / "run/metrics.json").read_text())["status"] == "failed"


# ---- the disk, signals --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_leaves_no_temporaries(tmp_path):
    result = driver("enospc", 8, [*SHORT, f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    line = one_line_error(result, "No space left on device", code=1)
    assert "; free some space (a checkpoint takes 0." in line and "MB; the last complete checkpoint is kept)" in line
    checkpoints = tmp_path / "run/checkpoints"
    assert [c.step for c in list_checkpoints(checkpoints)] == [4]
    assert not list(checkpoints.glob(".tmp_*"))


@pytest.mark.slow
def test_an_unwritable_run_directory_is_one_line(tmp_path):
    result = driver("eacces", 0, [*SHORT, f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    one_line_error(result, f"{tmp_path / 'run' / '.lock'}: Permission denied", code=1)


@pytest.mark.slow
def test_a_signal_while_setting_up_stops_at_once_and_records_it(tmp_path):
    result = driver("sigterm_setup", 0, [*SHORT, f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
                    tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "second signal" not in result.stdout + result.stderr
    summary = json.loads((tmp_path / "run/metrics.json").read_text())
    assert summary["status"] == "interrupted" and "before step 1; no checkpoint was written" in summary["message"]
    assert not (tmp_path / "run/checkpoints").exists()


@pytest.mark.slow
def test_a_signal_during_a_long_evaluation_stops_within_a_batch_and_the_printed_command_resumes(tmp_path):
    run_dir = tmp_path / "a run dir with spaces"
    args = [*SHORT, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    result = driver("sigterm_eval", 4, args, tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "validation batches after the signal: 0" in result.stderr  # of 200
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [4]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not any("val/loss" in r for r in rows if r["step"] == 4)  # cut short, so not logged
    command = result.stdout.split("Resume with:\n")[1].strip()
    assert shlex.split(command)[-1] == f"hydra.run.dir={run_dir}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    resumed = subprocess.run(command.replace("python", shlex.quote(__import__("sys").executable), 1), shell=True,
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]


@pytest.mark.slow
def test_a_state_file_of_another_structure_is_one_line(finished, tmp_path):
    import torch

    from llmlab.files import sha256_file

    run_dir, args = finished
    work = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run_dir), str(work)], check=True)
    checkpoint = work / "checkpoints/step_8"
    torch.save({"weights": [1, 2, 3]}, checkpoint / "state.pt")  # plain data, but not a trainer's state
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"bytes": (checkpoint / "state.pt").stat().st_size,
                                     "sha256": sha256_file(checkpoint / "state.pt")}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    resume = [a for a in args if not a.startswith("hydra.run.dir=")]
    result = run_cli("llmlab.run", [*resume, f"hydra.run.dir={work}", "trainer.max_steps=12",
                                    "trainer.allow_config_change=true"], tmp_path)
    one_line_error(result, f"checkpoint file {checkpoint / 'state.pt'} is not a trainer state of this run")


@pytest.mark.slow
def test_generate_refuses_a_nan_temperature_and_counts_unknown_prompt_characters(finished, tmp_path):
    run_dir, _ = finished
    one_line_error(run_cli("llmlab.generate", [f"run={run_dir}", "temperature=nan"], tmp_path),
                   "temperature must be a finite number, got nan")
    result = run_cli("llmlab.generate", [f"run={run_dir}", "prompt=Ωa€", "max_new_tokens=4"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: 2 prompt character(s) are not in the tokenizer's vocabulary" in result.stderr


@pytest.mark.slow
def test_a_vocab_size_the_tokenizer_overrides_is_said(tmp_path):
    result = run_cli("llmlab.run", [*SHORT, "trainer.max_steps=2", "model.vocab_size=99", f"cache_dir={tmp_path}"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: model.vocab_size=99 is ignored: the tokenizer decides the vocabulary" in result.stderr
