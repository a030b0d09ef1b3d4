"""Nothing silently wrong (issue 36): data that changed under a run, a validation split that is the training set,
options an import would drop, a model that is not what its config says. Each is fed through the real command line
and must end in one line (refused) or one warning line (legal, probably not meant)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST, run_cli
from test_own_text import prose
from test_trust import files_of, one_line_error

TEXT = [*(a for a in FAST if not a.startswith("data.")), "data=text", "trainer.max_steps=6",
        "trainer.checkpoint_every=3", "trainer.eval_every=3", "monitors=none"]


# ---- 5. resume and evaluate on changed data -------------------------------------------------------------------
@pytest.fixture
def text_run(tmp_path) -> tuple[Path, Path, list[str]]:
    """A completed run on a corpus of its own: the corpus, the run directory and the command's arguments."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(prose(60_000), encoding="utf-8")
    args = [*TEXT, f"data.paths=[{corpus}]", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli("llmlab.run", args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return corpus, tmp_path / "run", args


@pytest.mark.slow
def test_a_resume_on_an_edited_corpus_is_one_line_and_allow_data_change_goes_on(text_run, tmp_path):
    corpus, run_dir, args = text_run
    stats = json.loads((run_dir / "dataset_stats.json").read_text())["data_fingerprint"]
    manifest = json.loads((run_dir / "checkpoints" / "step_3" / "manifest.json").read_text())
    windows = json.loads((run_dir / "val_windows.json").read_text())
    assert manifest["data"]["sha256"] == stats["sha256"] == windows["data"]["sha256"]
    assert [s["name"] for s in stats["sources"]] == [corpus.name] or len(stats["sources"]) == 1
    corpus.write_text(prose(60_000, seed=1), encoding="utf-8")  # edited while the run was away
    before = files_of(run_dir)
    resume = [*args, f"trainer.resume={run_dir / 'checkpoints' / 'step_3'}"]
    line = one_line_error(run_cli("llmlab.run", resume, tmp_path), "the data changed since checkpoint")
    assert "changed" in line and "trainer.allow_data_change=true" in line
    assert files_of(run_dir) == before
    done = run_cli("llmlab.run", [*resume, "trainer.allow_data_change=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    now = json.loads((run_dir / "dataset_stats.json").read_text())["data_fingerprint"]
    assert now["sha256"] != stats["sha256"]


@pytest.mark.slow
def test_evaluate_on_changed_data_is_one_line_and_keeps_one_result_per_checkpoint(text_run, tmp_path):
    corpus, run_dir, _ = text_run
    summary = json.loads((run_dir / "metrics.json").read_text())
    for checkpoint in ("best", "step_3"):  # 2. one result per checkpoint, the earlier one kept
        done = run_cli("llmlab.evaluate", [f"run={run_dir}", f"checkpoint={checkpoint}", "device=cpu"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    results = {p.name: json.loads(p.read_text()) for p in (run_dir / "evaluation").glob("*.json")}
    assert sorted(results) == ["best.json", "step_3.json"]
    assert results["best.json"]["val_loss_full"] == pytest.approx(summary["val_loss_full"], rel=1e-5)
    assert results["step_3.json"]["val_loss_full"] != results["best.json"]["val_loss_full"]
    corpus.write_text(prose(60_000, seed=1), encoding="utf-8")
    before = files_of(run_dir)
    one_line_error(run_cli("llmlab.evaluate", [f"run={run_dir}", "device=cpu"], tmp_path),
                   "the validation split is not the one this run scored")
    assert files_of(run_dir) == before
    done = run_cli("llmlab.evaluate", [f"run={run_dir}", "device=cpu", "allow_data_change=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    changed = json.loads((run_dir / "evaluation" / "step_6.json").read_text())
    assert "data_changed" in changed and changed["val_loss_full"] != summary["val_loss_full"]
