"""The console of a run reaches run.log: library code logs through `logging`, so what a run prints and what its
run.log (and each sweep job's) holds are the same lines; the progress bar stays on the console alone."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import FAST, REPO, run_cli

from llmlab.console import STDERR
from llmlab.sinks.console import ConsoleSink

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ")


def logged_lines(run_log) -> list[str]:
    """run.log's lines without the time stamp a record's first line carries."""
    return [STAMP.sub("", line) for line in run_log.read_text().splitlines()]


@pytest.mark.slow
def test_a_runs_console_lines_are_its_run_log(tmp_path):
    run = tmp_path / "run"
    # warmup past the end: a warning (stderr) besides the information lines (stdout)
    done = run_cli("llmlab.run", [*FAST, f"cache_dir={tmp_path / 'cache'}", "trainer.warmup_steps=20",
                                  f"hydra.run.dir={run}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out, err = done.stdout.splitlines(), done.stderr.splitlines()
    assert any(line.startswith("model: ") for line in out) and f"outputs: {run}" in out
    evals = [line for line in out if line.startswith("step ")]  # the console sink: a line per evaluation
    assert [line.split(":")[0] for line in evals] == ["step 6", "step 12"] and all("val/loss " in e for e in evals)
    assert any(line.startswith("warning: trainer.warmup_steps=20 > trainer.max_steps=12") for line in err)
    assert sorted(logged_lines(run / "run.log")) == sorted(out + err)


@pytest.mark.slow
def test_each_sweep_job_logs_its_own_console_lines(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli("llmlab.run", ["-m", *FAST, f"cache_dir={tmp_path / 'cache'}", "model.n_layers=1,2",
                                  f"hydra.sweep.dir={sweep}", "+hydra.callbacks.sweep_report.generations=false",
                                  "+hydra.callbacks.sweep_report.plots=false"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p.parent for p in sweep.glob("*/run.log"))
    assert [job.name for job in jobs] == ["model.n_layers=1", "model.n_layers=2"]
    console = done.stdout.splitlines()
    for job in jobs:
        lines = logged_lines(job / "run.log")
        assert f"outputs: {job}" in lines and any(line.startswith("finished: 12 steps") for line in lines)
        # the job's lines, as the console showed them, in the same order
        start = console.index(f"outputs: {job}")
        assert lines[lines.index(f"outputs: {job}"):][:4] == console[start:start + 4]
    models = [line for line in console if line.startswith("model: ")]
    assert len(models) == 2 and all(sum(m in logged_lines(j / "run.log") for j in jobs) == 1 for m in models)


def test_the_console_sink_says_each_evaluation_in_one_line(capsys):
    sink = ConsoleSink()
    sink.log_scalars(2, {"train/loss": 3.5, "train/lr": 0.003})  # a log step without evaluation: the bar shows it
    sink.log_scalars(4, {"train/loss": 3.25, "train/lr": 0.003, "val/loss": 3.125, "val/bpb": 4.5, "eval/acc": 0.5})
    assert capsys.readouterr().out == "step 4: train/loss 3.25, val/loss 3.125, val/bpb 4.5, eval/acc 0.5\n"


def test_library_lines_reach_the_console_streams(capsys):
    log = logging.getLogger("llmlab.some.module")
    log.info("a line of information")
    log.info("a progress note", extra=STDERR)
    log.warning("warning: something odd")
    captured = capsys.readouterr()
    assert captured.out == "a line of information\n"
    assert captured.err == "a progress note\nwarning: something odd\n"


@pytest.mark.slow
def test_only_rank_0_speaks_and_other_ranks_say_their_errors():
    code = ("import logging, llmlab; log = logging.getLogger('llmlab.x'); log.info('info'); "
            "log.warning('warning: odd'); log.error('error: broken')")
    said = {}
    for rank in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO), "RANK": rank})
        said[rank] = (done.stdout, done.stderr)
    assert said["0"] == ("info\n", "warning: odd\nerror: broken\n")
    assert said["1"] == ("", "error: broken\n")
