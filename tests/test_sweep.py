"""Sweeps end in a report: tables, seeds grouped, plots, generations, failures included, HParams in TensorBoard."""

from __future__ import annotations

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from llmlab.runner import Run
from llmlab.store import CONF_DIR, register_configs, to_dataclass
from llmlab.sweep.report import group_over_seeds
from tests.conftest import run_cli, run_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SMALL = ["model.d_model=32", "model.context_length=32", "data.train_docs=300", "data.val_docs=40",
         "trainer.max_steps=6", "trainer.batch_size=4", "trainer.eval_every=3", "trainer.eval_batches=1",
         "trainer.warmup_steps=2", "trainer.log_every=3", "trainer.progress=false", "trainer.sample_tokens=8",
         "monitors=none"]


def test_seeds_are_grouped_with_mean_std_and_n():
    rows = [{"model.n_layers": n, "seed": s, "status": "completed", "val_loss": v, "best_val_loss": v,
             "val_ppl": None, "gap_to_floor": None, "wall_s": 1.0, "tokens_per_s": 10.0}
            for n, s, v in [("2", "1", 1.0), ("2", "2", 2.0), ("2", "3", 3.0), ("4", "1", 0.5), ("4", "2", 0.7)]]
    grouped = group_over_seeds(rows, ["model.n_layers", "seed"])
    assert [(g["model.n_layers"], g["n"]) for g in grouped] == [("2", 3), ("4", 2)]
    assert grouped[0]["val_loss_mean"] == pytest.approx(2.0) and grouped[0]["val_loss_std"] == pytest.approx(1.0)
    assert grouped[1]["val_loss_mean"] == pytest.approx(0.6)
    assert grouped[1]["val_loss_std"] == pytest.approx(0.1414214, rel=1e-5)  # sample std (n - 1)
    assert grouped[0]["gap_to_floor_mean"] is None
    assert group_over_seeds(rows, ["model.n_layers"]) == []  # no seed swept: nothing to group


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_composes_into_a_valid_multirun(name):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and cfg.hydra.sweeper.params
    assert f"experiments/{name}/" in cfg.hydra.sweep.dir
    with open_dict(cfg):
        del cfg["hydra"]
    to_dataclass(cfg)
    assert (CONF_DIR.parent / "experiments" / name / "README.md").is_file()


@pytest.mark.slow
def test_multirun_with_a_failing_job_still_ends_in_a_full_report(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model.n_layers=1,2", "trainer.lr=0.003,1e30", "trainer.on_nonfinite=stop", *SMALL,
            f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    result = run_cli("llmlab.run", args, cwd=tmp_path, timeout=600)
    assert result.returncode != 0  # Hydra reports the failed jobs at the end
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 4 and {r["model.n_layers"] for r in rows} == {"1", "2"}
    status = {(r["model.n_layers"], r["trainer.lr"]): r["status"] for r in rows}
    assert status == {("1", "0.003"): "completed", ("2", "0.003"): "completed",
                      ("1", "1e+30"): "failed", ("2", "1e+30"): "failed"}
    good = [r for r in rows if r["status"] == "completed"]
    assert all(float(r["val_loss"]) > 0 and int(r["steps"]) == 6 for r in good)
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["swept"] == ["model.n_layers", "trainer.lr"]
    md = (sweep / "sweep_summary.md").read_text()
    assert "| failed |" in md and "## Generations" in md
    for png in ("val_loss_vs_model.n_layers.png", "val_loss_curves_steps.png", "val_loss_curves_time.png",
                "params_vs_val_loss.png", "throughput_memory.png"):
        assert (sweep / png).stat().st_size > 1000, png
    generations = list(csv.DictReader((sweep / "generation_comparison.csv").open()))
    assert {g["job"] for g in generations} >= {r["job"] for r in good}

    (sweep / "sweep_summary.csv").unlink()  # the rebuild works from what is on disk
    rebuilt = run_cli("llmlab.sweep", [str(sweep), "--no-generations"], cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "4 jobs (2 completed)" in rebuilt.stdout
    assert len(list(csv.DictReader((sweep / "sweep_summary.csv").open()))) == 4


@pytest.mark.slow
def test_sweep_command_on_a_missing_directory_is_one_clear_line(tmp_path):
    result = run_cli("llmlab.sweep", [str(tmp_path / "nope")], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "nope" in result.stderr


@pytest.mark.slow
def test_run_records_hparams_and_final_metrics_in_its_own_event_file(tmp_path):
    Run(run_config(tmp_path, ["model.n_layers=1", "monitors=none"])).execute()
    events = EventAccumulator(str(tmp_path / "run/tb"), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model.n_layers"].number_value == 1 and hparams["model.norm"].string_value == "rmsnorm"
    assert {"final/val_loss", "final/best_val_loss"} <= set(events.Tags()["scalars"])
    assert not [p for p in (tmp_path / "run/tb").iterdir() if p.is_dir()]  # no timestamped sub-run


@pytest.mark.slow
def test_early_stopping_ends_a_run_completed_with_the_reason(tmp_path):
    overrides = ["trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=10", "trainer.max_steps=30",
                 "monitors=none"]
    result = Run(run_config(tmp_path, overrides)).execute()
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert result.status == "completed" and metrics["status"] == "completed"
    # evals at 6 (the first always improves) and 12 (not by 10 nats): stop at 12 of 30, with a checkpoint
    assert result.steps == 12 and "early stopping at step 12" in metrics["message"]
    assert (tmp_path / "run/checkpoints/step_12").is_dir()


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_configs_compose(launcher):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.n_layers=1,2", *SMALL,
            f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    result = run_cli("llmlab.run", args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert sorted((r["model.n_layers"], r["status"]) for r in rows) == [("1", "completed"), ("2", "completed")]
