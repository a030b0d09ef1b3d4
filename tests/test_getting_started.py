"""docs/getting-started.md's commands, run in order as a reader would, each training run made small with
`+debug=fast` (and a small synthetic corpus): the walk-through works end to end and leaves what the page says."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.docs_pages import ROOT

PAGE = ROOT / "docs" / "getting-started.md"
SMALL = ["+debug=fast", "trainer.threads=1", "trainer.progress=false", "data.train_docs=400", "data.val_docs=40"]


def fenced_commands() -> list[list[str]]:
    commands, fenced = [], False
    for line in PAGE.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("python -m llmlab."):
            commands.append(shlex.split(line, comments=True))
    return commands


def test_the_page_walks_through_train_sample_override_and_sweep():
    modules = [c[2] for c in fenced_commands()]
    assert modules == ["llmlab.run", "llmlab.generate", "llmlab.run", "llmlab.run", "llmlab.sweep"], modules


@pytest.mark.slow
def test_getting_started_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for argv in fenced_commands():
        extra = [*SMALL, f"cache_dir={tmp_path / 'cache'}"] if argv[2] == "llmlab.run" else []
        done = subprocess.run([sys.executable, *argv[1:], *extra], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if argv[2] == "llmlab.generate":
            assert done.stdout.strip(), "generate printed nothing"
    for run in ("first", "gpt2_style"):
        summary = json.loads((tmp_path / "outputs" / run / "metrics.json").read_text())
        assert summary["status"] == "completed"
        assert (tmp_path / "outputs" / run / "plots" / "training_curves.png").exists()
    report = (tmp_path / "outputs" / "depth" / "sweep_summary.md").read_text()
    assert "model.n_layers=2" in report and "model.n_layers=4" in report
