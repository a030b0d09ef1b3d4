"""Comparison plots of a sweep: loss against each swept parameter, loss curves against steps, time and compute
(seeds drawn as a band around their mean), size, speed and memory, and the models' internals per layer.

Readable for any sweep: integer parameters get integer ticks, labels stay inside the frame, narrow log axes get
labelled ticks, and a loss axis never spans less than MIN_LOSS_SPAN, so a small difference does not look like a
cliff.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from llmlab.monitors.circuit_history import circuits_history, peak
from llmlab.monitors.plots import render
from llmlab.sweep.collect import SEED, JobRecord, is_number
from llmlab.sweep.internals import per_layer_attention

MIN_LOSS_SPAN = 0.1  # nats: the least a loss axis spans
MIN_EVALS_TO_ZOOM = 8  # loss curves of fewer evaluations are shown whole, not zoomed on their second half


def _numeric(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def final_loss(row: dict) -> float | None:
    return row["val_loss_full"] if row.get("val_loss_full") is not None else row.get("val_loss")


def loss_axis(ax, low: float, high: float) -> None:
    """y limits around [low, high], at least MIN_LOSS_SPAN wide."""
    middle, half = (low + high) / 2, max(high - low, MIN_LOSS_SPAN) / 2 * 1.15
    ax.set_ylim(middle - half, middle + half)


def short(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.3g}"


def loss_vs_parameter(rows: list[dict], key: str) -> Figure:
    """Final loss per value of key: every job a dot, the mean over seeds a line with the std as error bars."""
    by_value: dict[str, list[float]] = {}
    for row in rows:
        if (loss := final_loss(row)) is not None:
            by_value.setdefault(row[key], []).append(loss)
    values = list(by_value)
    numeric = _numeric(values)
    if numeric is not None:
        order = np.argsort(numeric)
        values, numeric = [values[i] for i in order], [numeric[i] for i in order]
    means = [statistics.fmean(by_value[v]) for v in values]
    stds = [statistics.stdev(by_value[v]) if len(by_value[v]) > 1 else 0.0 for v in values]
    fig = Figure(figsize=(5.5, 3.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    xs = numeric if numeric is not None and len(values) > 1 else list(range(len(values)))
    categories = numeric is None or len(values) < 2  # no line between categories: there is nothing between them
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color="tab:blue", zorder=3, label="mean ± std",
                linestyle="none" if categories else "-")
    for x, v in zip(xs, values, strict=True):
        ax.scatter([x] * len(by_value[v]), by_value[v], s=12, color="tab:gray", alpha=0.7, zorder=2)
    if numeric is not None and len(values) > 1:
        spread = max(numeric) / min(numeric) if min(numeric) > 0 else 0
        if spread >= 20:  # a log grid (learning rates)
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(numeric, [short(x) for x in numeric])
    else:
        ax.set_xticks(xs, values, rotation=30 if max(map(len, values), default=0) > 8 else 0, ha="right")
    ax.margins(x=0.08)
    ax.set_xlabel(key)
    ax.set_ylabel("final val loss, whole split (nats/token)")
    everything = [x for v in by_value.values() for x in v]
    if everything:
        loss_axis(ax, min(everything), max(everything))
    n = max((len(v) for v in by_value.values()), default=0)
    ax.set_title(f"val loss vs {key}" + (f" (mean ± std of {n} jobs per value)" if n > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def setting_of(job: JobRecord, keys: list[str], labels: dict[str, str]) -> str:
    others = [k for k in keys if k != SEED]
    if others and job.overrides:
        return ",".join(f"{k}={job.overrides.get(k, '')}" for k in others)
    return labels.get(job.name, job.name)


def curve(job: JobRecord, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """val/loss against steps, training time or training FLOPs (from the job's FLOPs per step)."""
    rows = [r for r in job.curve if isinstance(r.get("step"), int) and is_number(r.get("val/loss"))]
    if x_key == "flops":
        flops, steps = job.value("train_flops"), job.value("steps")
        if not (is_number(flops) and is_number(steps) and steps):
            return np.array([]), np.array([])
        xs = [r["step"] * flops / steps for r in rows]
    elif x_key == "step":
        xs = [r["step"] for r in rows]
    else:  # time: the last logged training time at or before each evaluation
        xs, last = [], None
        for r in job.curve:
            if is_number(r.get(x_key)):
                last = r[x_key]
            if isinstance(r.get("step"), int) and is_number(r.get("val/loss")):
                xs.append(last)
        rows = [r for r, x in zip(rows, xs, strict=True) if x is not None]
        xs = [x for x in xs if x is not None]
    return np.asarray(xs, float), np.asarray([r["val/loss"] for r in rows], float)


def loss_curves(jobs: list[JobRecord], keys: list[str], labels: dict[str, str], x_key: str, x_label: str,
                budget: float | None = None) -> Figure:
    """Each setting's mean val loss over its seeds, with a band from the lowest to the highest seed."""
    fig = Figure(figsize=(6.5, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for job in jobs:
        xs, ys = curve(job, x_key)
        if len(xs):
            groups.setdefault(setting_of(job, keys, labels), []).append((xs, ys))
    lows, highs = [], []
    for i, (name, members) in enumerate(groups.items()):
        color = f"C{i % 10}"
        n = min(len(xs) for xs, _ in members)
        xs = np.mean([m[0][:n] for m in members], axis=0)
        ys = np.stack([m[1][:n] for m in members])
        ax.plot(xs, ys.mean(axis=0), marker=".", color=color, label=name + (f" ({len(members)})"
                                                                            if len(members) > 1 else ""))
        if len(members) > 1:
            ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.2, linewidth=0)
        # the y range follows the second half of a long curve, where settings differ; a curve of a few
        # evaluations is shown whole (cutting its first points would leave lines entering from the top)
        tail = ys[:, len(xs) // 2:] if len(xs) >= MIN_EVALS_TO_ZOOM else ys
        lows.append(tail.min())
        highs.append(tail.max())
    if budget is not None and x_key == "flops":
        ax.axvline(budget, color="gray", linestyle=":", label="compute-matched budget")
    if lows:
        loss_axis(ax, min(lows), max(highs))
    ax.set_xlabel(x_label)
    ax.set_ylabel("val loss (nats/token)")
    seeds = any(len(m) > 1 for m in groups.values())
    ax.set_title(f"validation loss against {x_label}" + (" (band: min-max over seeds)" if seeds else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    if 0 < len(groups) <= 12:
        ax.legend(fontsize=7)
    return fig


def params_vs_loss(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(5.5, 3.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    points: dict[tuple, list[float]] = {}
    for r in rows:
        if r["params"] and final_loss(r) is not None:
            points.setdefault((r["params"], r["job"].split(",seed=")[0]), []).append(final_loss(r))
    for (params, name), losses in points.items():
        ax.scatter([params] * len(losses), losses, s=16)
        ax.annotate(name, (params, statistics.fmean(losses)), fontsize=7, xytext=(4, 4),
                    textcoords="offset points", annotation_clip=True)
    sizes = sorted({p for p, _ in points})
    if sizes and sizes[-1] / sizes[0] >= 10:
        ax.set_xscale("log")
    if sizes:  # label the sizes themselves: a narrow log axis would have no major tick at all
        ax.set_xticks(sizes, [f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p:,}" for p in sizes], fontsize=7)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.margins(x=0.25, y=0.2)  # room for the labels inside the frame
    losses = [x for v in points.values() for x in v]
    if losses:
        loss_axis(ax, min(losses), max(losses))
    ax.set_xlabel("parameters")
    ax.set_ylabel("final val loss")
    ax.set_title("parameters vs validation loss", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def throughput_and_memory(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(max(7, 0.45 * len(rows) + 3), 4), dpi=110, layout="constrained")
    names = [r["job"] for r in rows]
    for i, (key, label) in enumerate((("tokens_per_s", "tokens/s"), ("peak_mem_mb", "peak memory (MB)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.bar(range(len(rows)), [r[key] or 0 for r in rows], color="tab:green" if i == 0 else "tab:purple")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(label, fontsize=10)
    return fig


def internals_per_layer(jobs: list[JobRecord], keys: list[str], labels: dict[str, str]) -> Figure | None:
    """Attention entropy and sink share per layer at the last capture, per setting (band: min-max over seeds)."""
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        layers = per_layer_attention(job.path)
        if layers:
            groups.setdefault(setting_of(job, keys, labels), []).append(layers)
    if not groups:
        return None
    fig = Figure(figsize=(11, 4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, stat, title in ((axes[0], "entropy", "attention entropy (nats)"),
                            (axes[1], "sink", "attention on the first token (share)")):
        depth = 0
        for i, (name, members) in enumerate(groups.items()):
            series = [m[stat] for m in members if stat in m]
            if not series:
                continue
            n = min(map(len, series))
            values = np.array([s[:n] for s in series])
            layers = np.arange(n)
            ax.plot(layers, values.mean(axis=0), marker="o", color=f"C{i % 10}", label=name)
            if len(series) > 1:
                ax.fill_between(layers, values.min(axis=0), values.max(axis=0), color=f"C{i % 10}", alpha=0.2,
                                linewidth=0)
            depth = max(depth, n)
        ax.set_xticks(range(depth))
        ax.set(title=title, xlabel="layer")
        ax.grid(alpha=0.3)
        if len(groups) <= 12:
            ax.legend(fontsize=7)
    return fig


def circuits_comparison(jobs: list[JobRecord], labels: dict[str, str]) -> Figure | None:
    """The strongest induction and copy head of each job at each capture; None when no job has circuits."""
    histories = {job.name: circuits_history(job.path) for job in jobs}
    if not any(histories.values()):
        return None
    fig = Figure(figsize=(11, 4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, score, title in ((axes[0], "induction", "induction score"), (axes[1], "copy", "copy score")):
        for job in jobs:
            rows = [row for row in histories[job.name] if peak(row, score) is not None]
            if rows:
                ax.plot([r["step"] for r in rows], [peak(r, score) for r in rows], marker=".",
                        label=labels.get(job.name, job.name))
        ax.set(title=f"strongest head's {title}", xlabel="steps", ylabel="score (0..1)", ylim=(0, 1))
        if ax.get_legend_handles_labels()[0] and len(jobs) <= 12:
            ax.legend(fontsize=7)
    return fig


def write_sweep_plots(sweep_dir: Path, jobs: list[JobRecord], rows: list[dict], keys: list[str],
                      budget: float | None = None) -> list[Path]:
    # a swept config group (experiment/moe_vs_dense) names a file, not a folder
    figures = {f"val_loss_vs_{k.replace('/', '.')}": loss_vs_parameter(rows, k) for k in keys if k != SEED}
    labels = {row["dir"]: row["job"] for row in rows}
    figures["val_loss_curves_steps"] = loss_curves(jobs, keys, labels, "step", "steps")
    figures["val_loss_curves_time"] = loss_curves(jobs, keys, labels, "perf/wall_s", "training time (s)")
    if any(row.get("train_flops") for row in rows):
        figures["val_loss_curves_flops"] = loss_curves(jobs, keys, labels, "flops", "training FLOPs", budget)
    figures["params_vs_val_loss"] = params_vs_loss(rows)
    figures["throughput_memory"] = throughput_and_memory(rows)
    if (internals := internals_per_layer(jobs, keys, labels)) is not None:
        figures["attention_per_layer"] = internals
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
