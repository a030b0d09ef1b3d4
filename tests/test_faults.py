"""Fault injection: crashes, half-written and damaged checkpoints, signals, unsafe pickles, a reused run directory.

Process-level faults go through tests/fault_driver.py, which patches the trainer and torch.save and then runs
the real CLI. Every recovered run is compared with an uninterrupted one: on CPU its final weights and every
logged value except timings must be bitwise equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, run_cli, run_config
from safetensors.torch import load_file

from llmlab.config.errors import ConfigError
from llmlab.load import load_trained
from llmlab.runner import Run
from llmlab.train.checkpoint import list_checkpoints, verify_checkpoint
from llmlab.train.run_dir import AlreadyCompleted

STEPS = 16
ARGS = [*FAST, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=4", "trainer.eval_every=8"]
TIMINGS = ("perf/tokens_per_s", "perf/mfu", "perf/wall_s")


def driver(fault: str, step: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(REPO / "tests/fault_driver.py"), fault, str(step), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def logged(run_dir: Path) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def assert_same_run(expected: Path, actual: Path) -> None:
    a = load_file(expected / f"checkpoints/step_{STEPS}/model.safetensors")
    b = load_file(actual / f"checkpoints/step_{STEPS}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "final weights differ"
    assert logged(expected) == logged(actual), "logged losses differ"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return f"cache_dir={tmp_path_factory.mktemp('cache')}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The uninterrupted run every recovered run must equal."""
    root = tmp_path_factory.mktemp("reference")
    done = run_cli("llmlab.run", [*ARGS, cache, f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_the_same_command_finishes_the_run_exactly(tmp_path, cache, reference):
    step = random.randint(1, STEPS)
    args = [*ARGS, cache, f"hydra.run.dir={tmp_path / 'run'}"]
    killed = driver("kill", step, args, tmp_path)
    assert killed.returncode == -signal.SIGKILL, f"kill at step {step}: {killed.stderr[-400:]}"
    saved = [c.step for c in list_checkpoints(tmp_path / "run/checkpoints")]
    assert saved == [s for s in (4, 8, 12) if s < step], f"kill at step {step}"  # killed before its own save
    again = run_cli("llmlab.run", args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert ("resumed from" in again.stdout) == bool(saved)
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path, cache, reference):
    args = [*ARGS, cache, f"hydra.run.dir={tmp_path / 'run'}"]
    killed = driver("kill_write", 8, args, tmp_path)
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "run/checkpoints"
    assert [c.step for c in list_checkpoints(checkpoints)] == [4]
    assert list(checkpoints.glob(".tmp_step_8.*")), "the half-written attempt stays under a temporary name"
    assert (checkpoints / "latest").read_text().strip() == "step_4"
    again = run_cli("llmlab.run", args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "step_4 (step 4)" in again.stdout
    assert not list(checkpoints.glob(".tmp_step_*"))
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigterm", "sigint"])
def test_a_signal_mid_run_writes_a_checkpoint_and_says_how_to_resume(tmp_path, cache, reference, fault):
    args = [*ARGS, cache, f"hydra.run.dir={tmp_path / 'run'}"]
    stopped = driver(fault, 6, args, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "Resume with:" in stopped.stdout and f"hydra.run.dir={tmp_path / 'run'}" in stopped.stdout
    verify_checkpoint(tmp_path / "run/checkpoints/step_6")
    assert json.loads((tmp_path / "run/metrics.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "run/plots/training_curves.png").stat().st_size > 10_000  # drawn on interruption too
    again = run_cli("llmlab.run", args, cwd=tmp_path)
    assert again.returncode == 0 and "step_6 (step 6)" in again.stdout
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.slow
def test_a_second_sigint_during_the_checkpoint_exits_at_once_and_corrupts_nothing(tmp_path, cache, reference):
    args = [*ARGS, cache, f"hydra.run.dir={tmp_path / 'run'}"]
    stopped = driver("sigint2", 6, args, tmp_path)
    assert stopped.returncode == 130
    assert "stopped at once by a second signal" in stopped.stderr and "Traceback" not in stopped.stderr
    complete = list_checkpoints(tmp_path / "run/checkpoints")
    assert [c.step for c in complete] == [4]
    verify_checkpoint(complete[0].path)
    again = run_cli("llmlab.run", args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_same_run(reference, tmp_path / "run")


def test_logs_are_cut_back_to_the_checkpoint_and_a_torn_last_line_is_dropped(tmp_path):
    from llmlab.files import truncate_jsonl
    from llmlab.train.evaluators import truncate_samples

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 2, "x": 1}\n{"step": 4, "x": 2}\n{"step": 6, "x": 3}\n{"step": 8, "x"')
    truncate_jsonl(metrics, 6)
    assert metrics.read_text() == '{"step": 2, "x": 1}\n{"step": 4, "x": 2}\n{"step": 6, "x": 3}\n'
    samples = tmp_path / "samples.txt"
    samples.write_text("--- step 8 (val/loss 1.0)\nab\ncd\n--- step 16 (val/loss 0.9)\nef\n")
    truncate_samples(samples, 12)
    assert samples.read_text() == "--- step 8 (val/loss 1.0)\nab\ncd\n"


# ---- damaged checkpoints (in-process) ----------------------------------------------------------
TRAIN = ["trainer.max_steps=12", "trainer.checkpoint_every=4"]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the end of the file: tensor data, past the safetensors header
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("damage,file", [(flip_a_byte, "model.safetensors"), (truncate, "state.pt")])
def test_a_damaged_checkpoint_is_named_and_auto_resume_falls_back_to_the_previous_one(tmp_path, capsys, damage,
                                                                                       file):
    Run(run_config(tmp_path, TRAIN)).execute()
    newest = tmp_path / "run/checkpoints/step_12"
    weights = {k: v.clone() for k, v in load_file(newest / "model.safetensors").items()}  # not a view of the file
    damage(newest / file)
    capsys.readouterr()

    with pytest.raises(ConfigError, match=f"checkpoint file {newest / file} is (corrupt|truncated)"):
        Run(run_config(tmp_path, [*TRAIN, f"trainer.resume={newest}"])).setup()  # named explicitly: stop

    result = Run(run_config(tmp_path, TRAIN)).execute()  # resume=auto: fall back and say so
    err = capsys.readouterr().err
    assert f"{newest / file}" in err and "falling back to an earlier checkpoint" in err
    assert result.status == "completed" and result.steps == 12
    verify_checkpoint(newest)  # step 12 again, retrained from step 8 ...
    again = load_file(newest / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)  # ... to the same weights


@pytest.mark.slow
def test_a_manifest_listing_no_files_or_a_file_grown_since_is_named(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=2", "trainer.checkpoint_every=2"])).execute()
    checkpoint = tmp_path / "run/checkpoints/step_2"
    with open(checkpoint / "state.pt", "ab") as f:
        f.write(b"extra")
    with pytest.raises(ConfigError, match=r"state.pt is longer than written: \d+ bytes, the manifest says"):
        verify_checkpoint(checkpoint)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    (checkpoint / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))
    with pytest.raises(ConfigError, match="manifest.json lists no files"):
        verify_checkpoint(checkpoint)


@pytest.mark.slow
def test_when_no_checkpoint_is_intact_the_run_stops_instead_of_starting_over(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_every=2"])).execute()
    for checkpoint in list_checkpoints(tmp_path / "run/checkpoints"):
        truncate(checkpoint.path / "model.safetensors")
    with pytest.raises(ConfigError, match="no intact checkpoint in .*step_4.* truncated"):
        Run(run_config(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_every=2"])).setup()


@pytest.mark.slow
def test_keep_checkpoints_keeps_the_newest(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=12", "trainer.checkpoint_every=2",
                              "trainer.keep_checkpoints=2"])).execute()
    assert [c.step for c in list_checkpoints(tmp_path / "run/checkpoints")] == [10, 12]


class RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.slow
def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=2", "trainer.checkpoint_every=2"])).execute()
    checkpoint, marker = tmp_path / "run/checkpoints/step_2", tmp_path / "pwned"
    torch.save({"trainer": RunsCode(marker)}, checkpoint / "state.pt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())  # a forger updates the checksums too
    data = (checkpoint / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ConfigError, match="state.pt holds objects other than tensors .* refused"):
        Run(run_config(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_every=2",
                                  "trainer.allow_config_change=true"])).setup()
    load_trained(tmp_path / "run")  # generate and analyze read weights from safetensors only
    assert not marker.exists()


# ---- a run directory reused by accident --------------------------------------------------------
def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "tb" not in p.parts and p.name != ".lock"}  # the lock names its last holder


@pytest.mark.slow
def test_a_new_config_in_an_old_run_directory_is_refused_naming_the_keys(tmp_path):
    base = ["trainer.max_steps=4", "trainer.checkpoint_every=2"]
    Run(run_config(tmp_path, base)).execute()
    before = snapshot(tmp_path / "run")

    with pytest.raises(ConfigError, match=r"another config \(trainer.lr: 0.003 there, 0.01 now\).*"
                                          r"trainer.allow_config_change=true"):
        Run(run_config(tmp_path, [*base, "trainer.lr=1e-2"])).setup()
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint step_4\)"):
        Run(run_config(tmp_path, [*base, "trainer.resume=never"])).setup()
    assert snapshot(tmp_path / "run") == before  # refused runs touched nothing

    # what only changes how a run is watched may differ (the finished run has nothing left to do); told
    # explicitly, a real change resumes too
    with pytest.raises(AlreadyCompleted):
        Run(run_config(tmp_path, [*base, "monitors=none"])).execute()
    result = Run(run_config(tmp_path, ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.lr=1e-2",
                                       "trainer.allow_config_change=true"])).execute()
    assert result.status == "completed" and result.steps == 6


# ---- load -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_soak_benchmark_writes_memory_samples(tmp_path):
    from llmlab.bench.__main__ import main

    out = tmp_path / "soak.json"
    main(["soak", "--steps", "40", "--block", "10", "--every", "5", "--out", str(out), *FAST[:4]])
    result = json.loads(out.read_text())
    assert [s["step"] for s in result["rss_mb"]] == [10, 20, 30, 40]
    # attention, distribution and health each hand the worker one job per capture
    assert result["completed_jobs"] == 3 * 40 // 5 and result["dropped_jobs"] == 0
    assert 0 < result["rss_min_mb"] <= result["rss_early_median_mb"] <= result["rss_max_mb"]
    assert result["growth_mb"] == result["rss_late_median_mb"] - result["rss_early_median_mb"]
