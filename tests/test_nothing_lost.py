"""Nothing lost: a refused command leaves every file of a run as it was, and later commands never overwrite what
earlier ones wrote (issue 36: a refused resume, evaluate per checkpoint, the sweep's --checkpoint, analyses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, run_cli
from test_trust import files_of, one_line_error

SHORT = [*FAST, "trainer.max_steps=8", "trainer.checkpoint_every=4", "trainer.eval_every=2", "monitors=none"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run that completed, with step_4, step_8 and best checkpoints: its directory and the command's arguments."""
    root = tmp_path_factory.mktemp("finished")
    args = [*SHORT, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"]
    result = run_cli("llmlab.run", args, root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run", args


# ---- 1. a refused resume touches nothing ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_resume_from_best_is_refused_up_front_and_the_run_keeps_every_file(finished, tmp_path):
    run_dir, args = finished
    before = files_of(run_dir)
    best = run_dir / "checkpoints" / "best"
    result = run_cli("llmlab.run", [*args, f"trainer.resume={best}"], tmp_path)
    one_line_error(result, f"trainer.resume={best}: {best} holds the weights alone")
    assert files_of(run_dir) == before  # metrics.jsonl, samples.txt, tb/, config_resolved.yaml: byte for byte
    again = run_cli("llmlab.run", args, tmp_path)  # and the original command still finds its run as it left it
    assert again.returncode == 0 and "already completed at step 8" in again.stdout, again.stderr[-2000:]


@pytest.mark.slow
def test_a_resume_that_fails_on_the_optimizer_state_after_allow_config_change_touches_nothing(finished, tmp_path):
    run_dir, args = finished
    before = files_of(run_dir)
    step_4 = run_dir / "checkpoints" / "step_4"
    result = run_cli("llmlab.run", [*args, f"trainer.resume={step_4}", "trainer.optimizer=adamw",
                                    "trainer.allow_config_change=true"], tmp_path)
    one_line_error(result, f"checkpoint file {step_4 / 'state.pt'} is not a trainer state of this run")
    assert files_of(run_dir) == before
