"""A run's own plots, as public functions (matplotlib Agg, no pyplot state): loss and perplexity against steps
and training time with the entropy floor and bigram baseline where known, learning rate and gradient norm, and
throughput. Every run writes plots/training_curves.png when it ends, interrupted or not; the sweep report
draws its curves with the same functions.

    from llmlab.plots import read_metrics, training_curves
    training_curves(read_metrics("outputs/<run>"), baselines={"entropy floor": 0.33}).savefig("curves.png")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llmlab.files import read_jsonl
from llmlab.monitors.circuit_history import circuits_history
from llmlab.monitors.plots import circuits_over_training_figure, render
from llmlab.rundir import RunDir

X_AXES = {"step": "steps", "perf/wall_s": "training time (s)"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of <run_dir>/metrics.jsonl, up to a torn last line (a run killed mid-write)."""
    return read_jsonl(RunDir(run_dir).metrics_log)


def run_baselines(run_dir: str | Path) -> dict[str, float]:
    """The entropy floor and bigram loss of a run's data (dataset_stats.json), where it has them."""
    path = RunDir(run_dir).dataset_stats
    stats = json.loads(path.read_text()) if path.exists() else {}
    named = {"entropy floor": stats.get("entropy_floor"), "bigram baseline": stats.get("bigram_loss")}
    return {k: v for k, v in named.items() if isinstance(v, int | float) and math.isfinite(v)}


def series(rows: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows that have both x and key; a wall-time axis reuses the last logged time for eval rows."""
    xs, ys, wall = [], [], None
    for row in rows:
        wall = row.get("perf/wall_s", wall)
        x_value = wall if x == "perf/wall_s" else row.get(x)
        if row.get(key) is not None and x_value is not None:
            xs.append(x_value)
            ys.append(row[key])
    return xs, ys


def plot_series(ax: Axes, rows: list[dict], key: str, x: str = "step", label: str | None = None, **style) -> bool:
    """One metric against x on ax; False when the rows hold none of it."""
    xs, ys = series(rows, key, x)
    if xs:
        ax.plot(xs, ys, label=label or key, **style)
    ax.set_xlabel(X_AXES.get(x, x))
    return bool(xs)


def plot_loss(ax: Axes, rows: list[dict], x: str = "step", baselines: dict[str, float] | None = None,
              perplexity: bool = False) -> None:
    """Train and validation loss (or perplexity) against x, with horizontal baselines."""
    transform = math.exp if perplexity else (lambda v: v)
    for key, style in (("train/loss", {"alpha": 0.8}), ("val/loss", {"marker": "o", "markersize": 3})):
        xs, ys = series(rows, key, x)
        if xs:
            label = key.replace("loss", "ppl") if perplexity else key
            ax.plot(xs, [transform(min(y, 50.0)) for y in ys], label=label, **style)
    for (name, value), color in zip((baselines or {}).items(), ("gray", "tab:red"), strict=False):
        ax.axhline(transform(value), color=color, linestyle="--", linewidth=1, label=name)
    ax.set_xlabel(X_AXES.get(x, x))
    ax.set_ylabel("perplexity" if perplexity else "loss (nats/token)")
    if perplexity:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


# A preference or reinforcement stage's loss is not a next-token loss: its curves are its objective's own figures.
# (title, keys, y label) per panel; a key of no row is left out, a panel of no key is left empty.
DPO_PANELS = [
    ("DPO loss (dashed: ln 2, no preference yet)", ["train/loss", "val/loss"], "-log sigmoid(margin)"),
    ("reward margin: chosen - rejected", ["dpo/reward_margin", "val/dpo/reward_margin"], "beta x log-ratio (nats)"),
    ("reward accuracy: chosen preferred", ["dpo/reward_accuracy", "val/dpo/reward_accuracy"], "share of pairs"),
]
GRPO_PANELS = [
    ("reward", ["grpo/reward_mean", "eval/task_accuracy"], "mean reward / accuracy"),
    ("KL to the reference", ["grpo/kl"], "nats/token"),
    ("policy entropy", ["grpo/entropy"], "nats/token"),
    ("GRPO loss (clipped surrogate + beta KL)", ["train/loss"], "loss"),
    ("validation: reference replies", ["val/loss"], "loss (nats/token)"),
]


def objective_panels(rows: list[dict]) -> list[tuple[str, list[str], str]] | None:
    """The DPO or GRPO panels when the rows are of such a run; None for a next-token objective."""
    keys = set().union(*rows) if rows else set()
    if "dpo/reward_margin" in keys:
        return DPO_PANELS
    if "grpo/reward_mean" in keys:
        # each reward function's term and each task family's reward
        families = sorted(k for k in keys if k.startswith(("grpo/reward/", "grpo/family/")))
        return [(GRPO_PANELS[0][0], [*GRPO_PANELS[0][1], *families], GRPO_PANELS[0][2]), *GRPO_PANELS[1:]]
    return None


def plot_learning_rates(ax: Axes, rows: list[dict]) -> None:
    """The learning rate of each optimizer: AdamW's (train/lr) and, under Muon, Muon's for the blocks' matrices."""
    muon = plot_series(ax, rows, "train/lr_muon", label="Muon (blocks' weight matrices)")
    plot_series(ax, rows, "train/lr", label="AdamW (embeddings, norms, head)" if muon else "AdamW (every weight)")
    ax.set_ylabel("learning rate")
    if muon:
        ax.set_yscale("log")  # Muon's rate is often ten times AdamW's
    ax.legend(fontsize=7)


def training_curves(rows: list[dict], baselines: dict[str, float] | None = None, title: str = "") -> Figure:
    """A 2 x 3 grid: loss against steps and time, perplexity, learning rate, gradient norm, throughput. A DPO or
    GRPO run gets its objective's own panels instead of the loss and perplexity (objective_panels)."""
    panels = objective_panels(rows)
    shown = 6 if panels is None else len(panels) + 3  # + learning rate, gradient norm, throughput
    columns = math.ceil(shown / 2)
    fig = Figure(figsize=(4.4 * columns, 7), dpi=100, layout="constrained")
    axes = list(fig.subplots(2, columns, squeeze=False).flat)
    if panels is None:
        plot_loss(axes[0], rows, "step", baselines)
        axes[0].set_title("loss against steps")
        plot_loss(axes[1], rows, "perf/wall_s", baselines)
        axes[1].set_title("loss against training time")
        plot_loss(axes[2], rows, "step", baselines, perplexity=True)
        axes[2].set_title("perplexity")
    else:
        for ax, (name, keys, ylabel) in zip(axes, panels, strict=False):
            for key in keys:
                plot_series(ax, rows, key, marker="o" if key.startswith(("val/", "eval/")) else None, markersize=3)
            ax.set(title=name, ylabel=ylabel)
            if name.startswith("DPO loss"):  # where every DPO run starts: the policy is still the reference
                ax.axhline(math.log(2), color="gray", linestyle="--", linewidth=1)
            if ax.lines:
                ax.legend(fontsize=7)
    bottom = axes[shown - 3:shown]
    plot_learning_rates(bottom[0], rows)
    bottom[0].set_title("learning rate")
    for ax, key, name in ((bottom[1], "train/grad_norm", "gradient norm"),
                          (bottom[2], "perf/tokens_per_s", "throughput (tokens/s)")):
        plot_series(ax, rows, key)
        ax.set_title(name)
    if any(v > 0 for v in series(rows, "train/grad_norm")[1]):  # a log axis needs a positive value to show
        bottom[1].set_yscale("log")
    for ax in axes[shown:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def write_training_curves(run_dir: str | Path) -> Path | None:
    """<run_dir>/plots/training_curves.png from its metrics; None when nothing was logged yet."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return None
    path = RunDir(run_dir).plot("training_curves")
    render(training_curves(rows, run_baselines(run_dir), title=run_dir.name), path)
    return path


def write_circuits_plot(run_dir: str | Path) -> Path | None:
    """<run_dir>/plots/circuits.png from the circuits monitor's history; None when it captured nothing."""
    run_dir = Path(run_dir)
    history = circuits_history(run_dir)
    if not history:
        return None
    steps = [row["step"] for row in history]
    names = [name for name in history[-1]["scores"] if all(name in row["scores"] for row in history)]
    scores = {name: np.asarray([row["scores"][name] for row in history], dtype=float) for name in names}
    lens = np.asarray([row["logit_lens"] for row in history], dtype=float)
    formed = [{**event, "step": row["step"]} for row in history for event in row.get("formed", [])]
    model_level = {key: [row.get(key, math.nan) for row in history] for key in ("copy_accuracy", "icl_loss_drop")}
    path = RunDir(run_dir).plot("circuits")
    render(circuits_over_training_figure(steps, scores, lens, series(read_metrics(run_dir), "val/loss"), formed,
                                         model_level, title=f"circuits: {run_dir.name}"), path)
    return path


def metric_panels(runs: dict[str, list[dict]], panels: list[tuple[str, list[str]]], x: str = "step",
                  title: str = "", columns: int = 3) -> Figure:
    """One panel per (title, keys): each key of each run (label -> its metrics rows) a line against x, so runs
    and metrics compare side by side (a stage's own scalars, e.g. rewards, KL and entropy)."""
    rows_n = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.4 * columns, 3.3 * rows_n), dpi=100, layout="constrained")
    axes = fig.subplots(rows_n, columns, squeeze=False).flatten()
    for ax, (name, keys) in zip(axes, panels, strict=False):
        for label, rows in runs.items():
            for key in keys:
                tag = label if len(keys) == 1 else f"{label}: {key.rsplit('/', 1)[-1]}" if len(runs) > 1 else key
                plot_series(ax, rows, key, x, label=tag, marker="o" if key.startswith("eval/") else None,
                            markersize=3)
        ax.set_title(name)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
