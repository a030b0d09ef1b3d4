"""Extremes of legal-looking input, signals in the final scoring and in `prepare`, a full disk while preparing data,
many shards under a low limit of open files: each fed through the real command line, each one line or handled."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, REPO, run_cli
from test_faults import driver
from test_trust import SHORT, one_line_error


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed run's directory."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli("llmlab.run", [*SHORT, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"], root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


# ---- numbers at the edge: one line, or what they mean -------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_temperature_samples_as_greedy_instead_of_a_torch_error(finished, tmp_path):
    args = [f"run={finished}", "prompt=a", "max_new_tokens=12", "device=cpu"]
    greedy = run_cli("llmlab.generate", [*args, "temperature=0"], tmp_path)
    tiny = run_cli("llmlab.generate", [*args, "temperature=1e-50"], tmp_path)  # 0 in fp32: logits / it were inf
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert tiny.stdout == greedy.stdout and "--- sample 1" in tiny.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", ["llmlab.run", "llmlab.generate"])
def test_a_seed_beyond_64_bits_is_one_line(finished, tmp_path, module):
    args = [*SHORT, f"cache_dir={tmp_path}"] if module == "llmlab.run" else [f"run={finished}", "max_new_tokens=4"]
    result = run_cli(module, [*args, f"seed={2**70}"], tmp_path)
    one_line_error(result, f"seed must be an integer in [0, 4294967295], got {2**70}")


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["trainer.threads=-1"], "trainer.threads must be >= 1 (null = one per usable core), got -1"),
    (["trainer.threads=0"], "trainer.threads must be >= 1"),
    (["data=mix", "data.sources=[{path: a.txt, weight: 1e308}, {path: b.txt, weight: 1e308}]"],
     "data.sources[].weight: the weights sum to inf; give relative weights whose sum is a finite number"),
])
def test_threads_below_one_and_weights_that_sum_to_inf_are_one_line(tmp_path, args, expected):
    short = [a for a in SHORT if not a.startswith("data.")] if "data=mix" in args else SHORT
    one_line_error(run_cli("llmlab.run", [*short, f"cache_dir={tmp_path}", *args], tmp_path), expected)


@pytest.mark.slow
def test_a_multirun_with_a_failing_job_ends_in_one_line_not_a_traceback(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
            "monitors=none", "trainer.lr=0.003,1e30", "trainer.on_nonfinite=stop", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}"]
    result = run_cli("llmlab.run", args, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "JobFailed" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith("error: a job of the multirun failed (run failed: non-finite loss")
    assert last.endswith(f"the sweep report lists every job: {sweep / 'sweep_summary.md'}")
    assert "| failed |" in (sweep / "sweep_summary.md").read_text()


# ---- bounded: open files -------------------------------------------------------------------------------------
def write_docs(path: Path, n: int) -> Path:
    words = "the cat sat on a mat and then ran far away from home to see the big sea".split()
    path.write_text("".join(json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(24))}) + "\n"
                            for i in range(n)))
    return path


def run_with_open_files(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`python -m llmlab.run ARGS` under `ulimit -n limit`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "llmlab.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))


@pytest.mark.slow
def test_more_shards_than_open_files_allowed_train(tmp_path):
    # 240 shards under a limit of 128 descriptors: one memory map (one descriptor) per shard failed with EMFILE
    docs = write_docs(tmp_path / "docs.jsonl", 240)
    args = [*(a for a in SHORT if not a.startswith("data.")), "trainer.max_steps=2", "data=hf", f"data.path={docs}",
            "data.shard_docs=1", "data.num_proc=1", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_with_open_files(args, tmp_path, 128)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "cache/shards").glob("*/train-*.train.bin"))) == 240
    summary = json.loads((tmp_path / "run/metrics.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2


# ---- signals ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_signal_during_the_final_scoring_stops_within_a_batch_and_the_next_start_scores(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SHORT, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    result = driver("sigterm_split", 0, args, tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "split batches after the signal: 0" in result.stderr  # of 100 times the split
    assert "SIGTERM while scoring the whole validation split after step 8" in result.stdout
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and "val_loss_full" not in summary
    assert not (run_dir / "val_windows.json").exists()
    rows = (run_dir / "metrics.jsonl").read_text()

    again = run_cli("llmlab.run", args, tmp_path)  # the same command: nothing to train, the split to score
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["val_loss_full"] > 0
    assert json.loads((run_dir / "val_windows.json").read_text())["checkpoint"] == "step_8"
    assert (run_dir / "metrics.jsonl").read_text() == rows  # no step trained or logged twice
    assert summary["train_loss"] == [json.loads(r) for r in rows.splitlines()][-1]["train/loss"]
