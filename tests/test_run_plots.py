"""llmlab.plots: a run's training curves, as functions and as the plots/training_curves.png every run writes."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_config

from llmlab.plots import metric_panels, read_metrics, run_baselines, series, training_curves, write_training_curves
from llmlab.runner import Run

ROWS = [
    {"step": 10, "train/loss": 3.0, "train/lr": 1e-3, "train/grad_norm": 2.0, "perf/tokens_per_s": 900.0,
     "perf/wall_s": 1.5},
    {"step": 20, "train/loss": 2.0, "train/lr": 2e-3, "train/grad_norm": 1.0, "perf/tokens_per_s": 1000.0,
     "perf/wall_s": 3.0, "val/loss": 2.2},
    {"step": 30, "train/loss": 1.5, "train/lr": 1e-3, "train/grad_norm": 0.5, "perf/tokens_per_s": 1100.0,
     "perf/wall_s": 4.5, "val/loss": 1.7},
]


def test_series_pairs_each_metric_with_its_step_or_training_time():
    assert series(ROWS, "val/loss") == ([20, 30], [2.2, 1.7])
    assert series(ROWS, "val/loss", "perf/wall_s") == ([3.0, 4.5], [2.2, 1.7])
    eval_only = [ROWS[0], {"step": 10, "val/loss": 2.5}]  # an eval row without its own time: the last one logged
    assert series(eval_only, "val/loss", "perf/wall_s") == ([1.5], [2.5])


def test_the_figure_draws_every_panel_and_the_baselines():
    fig = training_curves(ROWS, {"entropy floor": 0.5, "bigram baseline": 1.9})
    loss_steps, loss_time, ppl, lr, grad, speed = fig.axes
    labels = [line.get_label() for line in loss_steps.get_lines()]
    assert labels == ["train/loss", "val/loss", "entropy floor", "bigram baseline"]
    assert list(loss_time.get_lines()[1].get_xdata()) == [3.0, 4.5]
    assert ppl.get_lines()[1].get_ydata()[-1] == pytest.approx(math.exp(1.7))
    assert [len(ax.get_lines()[0].get_xdata()) for ax in (lr, grad, speed)] == [3, 3, 3]


def test_metric_panels_draw_each_key_of_each_run_and_hide_the_spare_axes():
    other = [{**row, "train/loss": row["train/loss"] / 2} for row in ROWS]
    fig = metric_panels({"a": ROWS, "b": other}, [("loss", ["train/loss"]), ("both", ["train/lr", "val/loss"])],
                        columns=3)
    loss, both, spare = fig.axes
    assert [line.get_label() for line in loss.get_lines()] == ["a", "b"]
    assert list(loss.get_lines()[1].get_ydata()) == [1.5, 1.0, 0.75]
    assert [line.get_label() for line in both.get_lines()] == ["a: lr", "a: loss", "b: lr", "b: loss"]
    assert not spare.get_visible()


def test_metrics_stop_at_a_torn_line_and_no_metrics_means_no_figure(tmp_path):
    assert write_training_curves(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + '\n{"step": 40, "tra')
    assert read_metrics(tmp_path) == ROWS
    assert write_training_curves(tmp_path).stat().st_size > 10_000


@pytest.mark.slow
def test_every_run_writes_its_training_curves(tmp_path):
    Run(run_config(tmp_path)).execute()
    run = tmp_path / "run"
    assert (run / "plots" / "training_curves.png").stat().st_size > 10_000
    assert set(run_baselines(run)) == {"entropy floor", "bigram baseline"}
