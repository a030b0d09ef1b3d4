"""Plots that say what they show: a stage's own objective, each optimizer's rate, whole short curves, legible
router loads, and a sweep's HParams view with the swept keys and every stage's metrics."""

from __future__ import annotations

import math

import numpy as np
import yaml
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from llmlab.monitors.plots import render, router_load_figure
from llmlab.plots import training_curves
from llmlab.sweep.collect import JobRecord
from llmlab.sweep.hparams import write_hparams_experiment
from llmlab.sweep.plots import loss_curves
from llmlab.train.summary import log_hparams


def common(step: int) -> dict:
    return {"step": step, "train/lr": 1e-3 * step, "train/grad_norm": 1.0 / step, "perf/tokens_per_s": 1000.0,
            "perf/wall_s": 0.1 * step}


def panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def labels(ax) -> list[str]:
    return [line.get_label() for line in ax.lines]


def test_a_dpo_run_plots_its_loss_margin_and_accuracy_not_a_perplexity():
    rows = [{**common(s), "train/loss": 0.69 - 0.05 * s, "dpo/reward_margin": 0.1 * s, "dpo/reward_accuracy": 0.5}
            for s in range(1, 7)]
    rows.append({"step": 6, "val/loss": 0.6, "val/ppl": math.exp(0.6), "val/dpo/reward_margin": 0.3,
                 "val/dpo/reward_accuracy": 0.75})
    shown = panels(training_curves(rows))
    assert not any("perplexity" in t for t in shown)
    assert all(ax.get_ylabel() != "loss (nats/token)" for ax in shown.values())
    margin = next(ax for t, ax in shown.items() if t.startswith("reward margin"))
    assert labels(margin) == ["dpo/reward_margin", "val/dpo/reward_margin"]
    loss = next(ax for t, ax in shown.items() if t.startswith("DPO loss"))
    assert any(np.allclose(line.get_ydata(), math.log(2)) for line in loss.lines)  # where DPO starts


def test_a_grpo_run_plots_reward_kl_and_entropy():
    rows = [{**common(s), "train/loss": 0.1, "grpo/reward_mean": 0.1 * s, "grpo/reward/count": 0.2, "grpo/kl": 0.01,
             "grpo/entropy": 2.0} for s in range(1, 5)]
    shown = panels(training_curves(rows))
    assert {"reward", "KL to the reference", "policy entropy"} <= set(shown)
    assert labels(shown["reward"]) == ["grpo/reward_mean", "grpo/reward/count"]
    assert labels(shown["KL to the reference"]) == ["grpo/kl"]
    assert not any("perplexity" in t for t in shown)


def test_the_learning_rate_panel_names_the_optimizer_and_shows_muons_rate():
    adamw = panels(training_curves([{**common(s), "train/loss": 3.0} for s in range(1, 4)]))["learning rate"]
    assert labels(adamw) == ["AdamW (every weight)"]
    muon_rows = [{**common(s), "train/loss": 3.0, "train/lr_muon": 0.02 * s} for s in range(1, 4)]
    muon = panels(training_curves(muon_rows))["learning rate"]
    assert labels(muon) == ["Muon (blocks' weight matrices)", "AdamW (embeddings, norms, head)"]
    assert list(muon.lines[0].get_ydata()) == [0.02, 0.04, 0.06]


def job(name: str, losses: list[float], path=None, summary=None, overrides=None) -> JobRecord:
    curve = [{"step": 6 * (i + 1), "val/loss": v} for i, v in enumerate(losses)]
    return JobRecord(name, path, overrides if overrides is not None else {"model.n_layers": name}, "completed",
                     summary or {}, curve)


def test_sweep_loss_curves_of_few_evaluations_show_every_point():
    jobs = [job("1", [3.6, 3.22]), job("2", [3.5, 3.17])]
    ax = loss_curves(jobs, ["model.n_layers"], {}, "step", "steps").axes[0]
    low, high = ax.get_ylim()
    assert low <= 3.17 and high >= 3.6
    # a long curve is still zoomed on its second half, where settings differ
    long = [job("1", [5.0, *np.linspace(3.3, 3.2, 11)]), job("2", [5.0, *np.linspace(3.25, 3.15, 11)])]
    assert loss_curves(long, ["model.n_layers"], {}, "step", "steps").axes[0].get_ylim()[1] < 5.0


def test_router_load_is_drawn_large_enough_to_read():
    loads = {"layer0": np.full((4, 3), 0.25), "layer1": np.full((4, 3), 0.25)}
    height, width, _ = render(router_load_figure([2, 4, 6], loads)).shape
    assert width >= 600 and height >= 400


def sweep_job(root, name: str, stage: str, overrides: dict, summary: dict) -> JobRecord:
    path = root / name
    cfg = run_config(root / "cfg")
    (path / "tb").mkdir(parents=True)
    config = {"stage": {"name": stage}, "model": {"n_layers": int(overrides.get("model.n_layers", 2))},
              "trainer": {"lr": 1e-3}, "seed": 0}
    (path / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(str(path / "tb"))
    log_hparams(writer, cfg, {"steps": 4, **summary}, [f"{k}={v}" for k, v in overrides.items()],
                experiment=False)
    writer.close()
    return JobRecord(name, path, overrides, "completed", {"steps": 4, **summary}, [])


def experiment_of(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.summary_metadata
    return tags.get(hparams_metadata.EXPERIMENT_TAG), events


def test_a_sweeps_hparams_view_shows_the_swept_key_and_every_stages_metrics(tmp_path):
    jobs = [sweep_job(tmp_path, "a", "sft", {"model.n_layers": "1", "arch": "gpt2"}, {"val_loss": 1.0,
                                                                                       "val_bpb": 1.4}),
            sweep_job(tmp_path, "b", "dpo", {"model.n_layers": "2", "arch": "llama"}, {"val_loss": 0.6,
                                                                                        "tokens_per_s": 10.0})]
    for j in jobs:  # a job of a sweep records its own session, and no experiment that would hide the others
        assert experiment_of(j.path / "tb")[0] is None
    written = write_hparams_experiment(tmp_path, jobs, ["model.n_layers", "arch"])
    assert written.parent == tmp_path  # the sweep's own run in TensorBoard; no job's directory is touched
    meta, _ = experiment_of(tmp_path)
    experiment = hparams_metadata.parse_experiment_plugin_data(meta.plugin_data.content)
    infos = {i.name: i.differs for i in experiment.hparam_infos}
    assert infos["model.n_layers"] and infos["arch"] and not infos["stage.name"]
    assert {m.name.tag for m in experiment.metric_infos} == {"final/val_loss", "final/val_bpb", "final/tokens_per_s"}
