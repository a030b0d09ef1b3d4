"""Nothing lost: a refused command leaves every file of a run as it was, and later commands never overwrite what
earlier ones wrote (issue 36: a refused resume, evaluate per checkpoint, the sweep's --checkpoint, analyses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, run_cli
from test_trust import files_of, finished_run, one_line_error

SHORT = [*FAST, "trainer.max_steps=8", "trainer.checkpoint_every=4", "trainer.eval_every=2", "monitors=none"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run that completed, with step_4, step_8 and best checkpoints: its directory and the command's arguments."""
    return finished_run(tmp_path_factory, SHORT)


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


# ---- 3. the sweep rebuild: a choice no job has is one line, and nothing is rewritten ---------------------------
@pytest.fixture
def built_sweep(tmp_path) -> Path:
    """A sweep of two finished jobs with a step_4 checkpoint each, and its report built once."""
    from test_sweep_faults import curve, make_job, summary

    from llmlab.sweep.report import write_sweep_report

    sweep = tmp_path / "sweep"
    for layers in (1, 2):
        job = make_job(sweep, layers, summary(), curve())
        (job / "checkpoints" / "step_4").mkdir(parents=True)
        (job / "checkpoints" / "step_4" / "manifest.json").write_text("{}")
    write_sweep_report(sweep, plots=False)
    return sweep


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["--checkpoint", "step_999"], "--checkpoint step_999: no job of this sweep has it (the jobs have: step_4)"),
    (["--reference", "model.n_layers=7"], "sweep.reference=model.n_layers=7: no setting of this sweep matches it"),
])
def test_a_sweep_rebuild_with_a_choice_no_job_has_is_one_line_and_rewrites_nothing(built_sweep, tmp_path, args,
                                                                                  expected):
    before = files_of(built_sweep)
    result = run_cli("llmlab.sweep", [str(built_sweep), "--no-plots", *args], tmp_path)
    one_line_error(result, expected)
    assert files_of(built_sweep) == before


# ---- 4. analyses of two models in directories of the same name never collide; 19. analyze needs no text -------
@pytest.mark.slow
def test_analyses_of_two_imported_models_named_alike_are_kept_apart_and_need_no_text(tmp_path):
    from test_hf_import import tiny_model

    from llmlab.data.tokenizers import ByteTokenizer
    from llmlab.interop.hf_tokenizer import save_hf_tokenizer

    for parent in ("a", "b"):
        directory = tmp_path / parent / "moe"
        tiny_model("gpt2" if parent == "a" else "llama").save_pretrained(directory)
        save_hf_tokenizer(ByteTokenizer(), directory)
        done = run_cli("llmlab.analyze", ["model=hf", f"model.path={directory}", "no_plots=true", "device=cpu"],
                       tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "outputs" / "analysis").iterdir())
    assert len(written) == 2 and all(name.startswith("moe-") for name in written)


@pytest.mark.slow
def test_the_documented_circuits_analysis_runs_as_written(finished, tmp_path):
    run_dir, _ = finished
    done = run_cli("llmlab.analyze", [f"run={run_dir}", "circuits=true", "no_plots=true", "device=cpu"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / "analysis" / "circuits" / "step_8" / "statistics.json").is_file()
