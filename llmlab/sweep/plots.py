"""Comparison plots of a sweep: loss against each swept parameter, loss curves, size, speed and memory."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from llmlab.monitors.circuit_history import circuits_history, peak
from llmlab.monitors.plots import render
from llmlab.plots import plot_series
from llmlab.sweep.collect import SEED, JobRecord


def _numeric(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def loss_vs_parameter(rows: list[dict], key: str) -> Figure:
    """Final val loss per value of key: mean over the jobs with that value, error bars = std across them."""
    by_value: dict[str, list[float]] = {}
    for row in rows:
        if row["val_loss"] is not None:
            by_value.setdefault(row[key], []).append(row["val_loss"])
    values = list(by_value)
    numeric = _numeric(values)
    if numeric is not None:
        order = np.argsort(numeric)
        values = [values[i] for i in order]
    means = [statistics.fmean(by_value[v]) for v in values]
    stds = [statistics.stdev(by_value[v]) if len(by_value[v]) > 1 else 0.0 for v in values]
    fig = Figure(figsize=(5, 3.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if numeric is not None and len(values) > 1:
        ax.errorbar([float(v) for v in values], means, yerr=stds, marker="o", capsize=4)
    else:
        ax.bar(range(len(values)), means, yerr=stds, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(values)), values, rotation=30, ha="right")
    ax.set_xlabel(key)
    ax.set_ylabel("final val loss (nats/token)")
    floors = {r["entropy_floor"] for r in rows if r["entropy_floor"] is not None}
    if len(floors) == 1:
        ax.axhline(floors.pop(), color="gray", linestyle="--", label="entropy floor")
        ax.legend()
    n = max((len(v) for v in by_value.values()), default=0)
    ax.set_title(f"val loss vs {key}" + (f" (mean ± std over {n} jobs)" if n > 1 else ""))
    return fig


def loss_curves(jobs: list[JobRecord], labels: dict[str, str], x_key: str, x_label: str) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for job in jobs:
        plot_series(ax, job.curve, "val/loss", x_key, label=labels.get(job.name, job.name), marker=".")
    ax.set_xlabel(x_label)
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title(f"validation loss against {x_label}")
    if len(jobs) <= 12:
        ax.legend(fontsize=7)
    return fig


def params_vs_loss(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(5, 3.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    points = [(r["params"], r["val_loss"], r["job"]) for r in rows if r["params"] and r["val_loss"] is not None]
    for params, loss, name in points:
        ax.scatter(params, loss)
        ax.annotate(name, (params, loss), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("final val loss")
    ax.set_title("parameters vs validation loss")
    return fig


def throughput_and_memory(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(7, 3.5), dpi=100, layout="constrained")
    names = [r["job"] for r in rows]
    for i, (key, label) in enumerate((("tokens_per_s", "tokens/s"), ("peak_mem_mb", "peak memory (MB)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.bar(range(len(rows)), [r[key] or 0 for r in rows], color="tab:green" if i == 0 else "tab:purple")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(label)
    return fig


def circuits_comparison(jobs: list[JobRecord], labels: dict[str, str]) -> Figure | None:
    """The strongest induction and copy head of each job at each capture; None when no job has circuits."""
    histories = {job.name: circuits_history(job.path) for job in jobs}
    if not any(histories.values()):
        return None
    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, score, title in ((axes[0], "induction", "induction score"), (axes[1], "copy", "copy score")):
        for job in jobs:
            rows = [row for row in histories[job.name] if peak(row, score) is not None]
            if rows:
                ax.plot([r["step"] for r in rows], [peak(r, score) for r in rows], marker=".",
                        label=labels.get(job.name, job.name))
        ax.set(title=f"strongest head's {title}", xlabel="steps", ylabel="score (0..1)", ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def write_sweep_plots(sweep_dir: Path, jobs: list[JobRecord], rows: list[dict], keys: list[str]) -> list[Path]:
    # a swept config group (experiment/moe_vs_dense) names a file, not a folder
    figures = {f"val_loss_vs_{k.replace('/', '.')}": loss_vs_parameter(rows, k) for k in keys if k != SEED}
    labels = {row["dir"]: row["job"] for row in rows}
    figures["val_loss_curves_steps"] = loss_curves(jobs, labels, "step", "steps")
    figures["val_loss_curves_time"] = loss_curves(jobs, labels, "perf/wall_s", "training time (s)")
    figures["params_vs_val_loss"] = params_vs_loss(rows)
    figures["throughput_memory"] = throughput_and_memory(rows)
    if (circuits := circuits_comparison(jobs, labels)) is not None:
        figures["circuits_comparison"] = circuits
    for stale in sweep_dir.glob("val_loss_vs_*.png"):  # from an earlier build with other swept keys
        if stale.stem not in figures:
            stale.unlink()
    paths = []
    for name, fig in figures.items():
        path = sweep_dir / f"{name}.png"
        render(fig, path)
        paths.append(path)
    return paths
