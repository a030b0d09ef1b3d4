"""Figures for training monitors, built with matplotlib's object API (Figure + Agg canvas) only.

Monitors render these in background processes (llmlab.monitors.pool) or threads while training runs, so
pyplot (global, not thread-safe state) is never imported here, nor torch (render processes stay light), and
figures stay small (80 dpi, a few inches) to be cheap to draw.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

DPI = 80
MAX_LABELS = 64  # more tick labels than this are unreadable, so none are drawn
GRID_MAX_LABELS = 16  # panels in a grid are small (2 inches): more labels than this would not be legible
STAT_KEYS = ("mean", "std", "min", "max", "kurtosis", "sparsity")
SEQUENTIAL, DIVERGING = "viridis", "RdBu_r"


def _figure(width: float, height: float) -> Figure:
    # Constrained layout keeps titles, tick labels and colorbars apart, inside the one draw that render does.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def render(fig: Figure, path: Path | None = None) -> np.ndarray:
    """Draw fig once, optionally write it as PNG to path, and return its RGB pixels as uint8 (H, W, 3)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = canvas.buffer_rgba()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Save the already drawn buffer: fig.savefig would lay out and draw everything a second time. Written
        # beside and renamed, so a reader (or a second drawing of the same figure) never sees half a file.
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        mpimg.imsave(partial, rgba, format="png")
        os.replace(partial, path)
    return np.asarray(rgba)[..., :3].copy()  # copy: the buffer belongs to the canvas


def _tick_labels(ax: Axes, labels: list[str] | None, limit: int, fontsize: float, x: bool = True,
                 y: bool = True) -> None:
    """Label the x and/or y axis of an image; an axis left unlabelled, or with too many labels to read, is bare."""
    show = labels if labels and len(labels) <= limit else []
    ticks = range(len(show))
    ax.set_xticks(ticks if x else [], show if x else [], fontsize=fontsize, rotation=90)
    ax.set_yticks(ticks if y else [], show if y else [], fontsize=fontsize)


def _label_fontsize(n: int) -> float:
    return 8 if n <= 16 else 6 if n <= 32 else 4


# Attention weights of a causal row spread over up to T keys, so most are near 1/T: on a linear 0..1 scale a map is
# one dark colour. A log scale from a quarter of 1/T up to the map's largest weight shows where the weight goes;
# keys a query cannot see (weight 0, the causal mask) are left white.
LABEL_INCHES = 0.13  # room per labelled token: a map with token labels grows with them, so they stay legible
ATTENTION_CMAP = colormaps[SEQUENTIAL].with_extremes(bad="white")


def _attention_norm(*maps: np.ndarray) -> LogNorm:
    top = max(float(np.nanmax(m)) for m in maps)
    low = min(0.01, 0.25 / max(m.shape[-1] for m in maps))
    return LogNorm(vmin=low, vmax=max(top, low * 10), clip=True)


def _masked(p: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_less_equal(p, 0.0)


def histogram_figure(
    counts: np.ndarray, edges: np.ndarray, title: str, stats: dict[str, float] | None = None
) -> Figure:
    """Histogram from precomputed counts (n) and bin edges (n + 1), with an optional stats box."""
    fig = _figure(4.8, 3.2)
    ax = fig.add_subplot()
    # One filled step patch instead of n bar rectangles: same picture, far cheaper to draw.
    ax.stairs(np.asarray(counts, dtype=float), np.asarray(edges, dtype=float), fill=True, color="tab:blue")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("count")
    if stats and (keys := [k for k in STAT_KEYS if k in stats]):
        text = "\n".join(f"{k:<8} {stats[k]:>10.4g}" for k in keys)
        ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=7, family="monospace",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    return fig


def heatmap_figure(
    matrix: np.ndarray, title: str, xlabel: str = "", ylabel: str = "", symmetric: bool = True
) -> Figure:
    """2-D matrix as an image with a colorbar; symmetric uses a diverging colormap centred at 0."""
    m = np.atleast_2d(np.asarray(matrix, dtype=float))
    fig = _figure(4.8, 4.0)
    ax = fig.add_subplot()
    if symmetric:
        finite = np.abs(m[np.isfinite(m)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0  # all-zero still needs a range
        im = ax.imshow(m, cmap=DIVERGING, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    else:
        im = ax.imshow(m, cmap=SEQUENTIAL, aspect="auto", interpolation="nearest")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax, shrink=0.85)
    return fig


def attention_figure(probs: np.ndarray, title: str, labels: list[str] | None = None) -> Figure:
    """One (T, T) attention map: rows are queries, columns keys, on a log colour scale."""
    p = np.asarray(probs, dtype=float)
    labelled = bool(labels) and len(labels) <= MAX_LABELS
    side = min(max(5.0, 1.8 + LABEL_INCHES * len(labels)), 11.0) if labelled else 5.0
    fig = _figure(side, side * 0.88)
    ax = fig.add_subplot()
    im = ax.imshow(_masked(p), cmap=ATTENTION_CMAP, norm=_attention_norm(p), interpolation="nearest")
    if labelled:
        _tick_labels(ax, labels, MAX_LABELS, 7)
    ax.set(title=title, xlabel="key (attended token)", ylabel="query (attending token)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="attention weight (log scale; white: masked)")
    return fig


def _panel_grid(maps: np.ndarray, titles: list[str], cols: int, title: str, labels: list[str] | None) -> Figure:
    """Square maps in a rows x cols grid on one shared log colour scale (attention_figure's)."""
    n = len(maps)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    panel = 2.0 if cols <= 4 else 1.6  # shrink panels as the grid widens so the figure stays modest
    fig = _figure(0.8 + panel * cols, 0.5 + panel * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    fontsize = 6
    norm = _attention_norm(maps)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(_masked(maps[i]), cmap=ATTENTION_CMAP, norm=norm, interpolation="nearest")
        ax.set_title(titles[i], fontsize=8)
        # Ticks on the outer panels only: each tick costs layout time, and inner ones would only repeat them.
        _tick_labels(ax, labels, GRID_MAX_LABELS, fontsize, x=i + cols >= n, y=i % cols == 0)
    fig.colorbar(im, ax=axes, shrink=0.7, label="weight (log scale)")
    fig.supxlabel("key", fontsize=9)
    fig.supylabel("query", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def _stack(probs: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 3 or p.shape[1] != p.shape[2] or len(p) == 0:
        raise ValueError(f"{what}: expected a non-empty (N, T, T) array, got shape {p.shape}")
    return p


def head_grid_figure(probs: np.ndarray, title: str, labels: list[str] | None = None) -> Figure:
    """(H, T, T) attention maps, one panel per head in a near-square grid."""
    p = _stack(probs, "head_grid_figure")
    return _panel_grid(p, [f"head {i}" for i in range(len(p))], math.ceil(math.sqrt(len(p))), title, labels)


def layer_comparison_figure(probs: np.ndarray, title: str, layer_names: list[str] | None = None) -> Figure:
    """(L, T, T) head-averaged maps, one panel per layer in a row (a grid of 6 columns past 6 layers)."""
    p = _stack(probs, "layer_comparison_figure")
    titles = list(layer_names) if layer_names else [f"layer {i}" for i in range(len(p))]
    return _panel_grid(p, titles, 6, title, None)


SCORE_TITLES = {"induction": "induction score", "copy": "copy score", "prev_token": "previous-token score"}


def circuit_scores_figure(scores: dict[str, np.ndarray], title: str) -> Figure:
    """One capture's circuit scores: a layer x head heatmap per score, on one 0..1 scale."""
    names = [n for n in SCORE_TITLES if n in scores]
    layers, heads = np.asarray(scores[names[0]]).shape
    fig = _figure(0.8 + 2.6 * len(names), 1.2 + 0.35 * max(layers, 3))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        im = ax.imshow(np.asarray(scores[name], dtype=float), cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest")
        ax.set_title(SCORE_TITLES[name], fontsize=9)
        ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=7)
        ax.set_yticks(range(layers), [str(layer) for layer in range(layers)], fontsize=7)
        ax.set(xlabel="head", ylabel="layer")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def _head_labels(layers: int, heads: int) -> tuple[list[int], list[str]]:
    """y ticks for a (layers * heads) axis: every head when few, else the first head of each layer."""
    if layers * heads <= 48:
        return list(range(layers * heads)), [f"L{layer} H{h}" for layer in range(layers) for h in range(heads)]
    return [layer * heads for layer in range(layers)], [f"L{layer} H0" for layer in range(layers)]


def circuits_over_training_figure(steps: list[int], scores: dict[str, np.ndarray], lens: np.ndarray,
                                  val: tuple[list[int], list[float]], formed: list[dict],
                                  model_level: dict[str, list[float]], title: str = "") -> Figure:
    """How circuits formed during a run. scores: name -> (captures, layers, heads); lens: (captures, layers);
    val: the run's (steps, validation losses); formed: formation events (step, score, layer, head)."""
    names = [n for n in SCORE_TITLES if n in scores]
    fig = Figure(figsize=(15, 9), dpi=100, layout="constrained")
    top, bottom_row = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    captures, layers, heads = np.asarray(scores[names[0]]).shape
    ticks, labels = _head_labels(layers, heads)
    shown = sorted(set(np.linspace(0, captures - 1, min(captures, 8)).round().astype(int).tolist()))
    for ax, name in zip(top.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        matrix = np.asarray(scores[name], dtype=float).reshape(captures, layers * heads).T  # (heads, captures)
        im = ax.imshow(matrix, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        events = [e for e in formed if e["score"] == name and e["step"] in steps]
        for event in events:
            ax.plot(steps.index(event["step"]), event["layer"] * heads + event["head"], marker="*", color="red",
                    markersize=14, markeredgecolor="white", linestyle="none")
        for boundary in range(1, layers):  # lines between layers
            ax.axhline(boundary * heads - 0.5, color="white", linewidth=0.8)
        ax.set_yticks(ticks, labels, fontsize=7 if len(ticks) > 16 else 8)
        ax.set_xticks(shown, [str(steps[k]) for k in shown], fontsize=8)
        marked = f" (red star: formed, step {min(e['step'] for e in events)})" if events else ""
        ax.set(title=f"{SCORE_TITLES[name]} per head{marked}", xlabel="step", ylabel="layer / head")
        top.colorbar(im, ax=ax, shrink=0.9)

    bottom = bottom_row.subplots(1, 3)
    lens = np.asarray(lens, dtype=float)
    for layer in range(lens.shape[1]):
        bottom[0].plot(steps, lens[:, layer], marker="o", markersize=3, label=f"after layer {layer}")
    bottom[0].set(title="logit lens: loss decoding each layer", xlabel="step", ylabel="loss (nats/token)")
    bottom[0].legend(fontsize=7)

    ax = bottom[1]
    if val[0]:
        ax.plot(val[0], val[1], marker="o", markersize=3, color="black", label="val/loss")
    for k, step in enumerate(sorted({e["step"] for e in formed})):
        heads_formed = ", ".join(f"L{e['layer']}H{e['head']} {e['score']}" for e in formed if e["step"] == step)
        ax.axvline(step, color="red", linestyle="--", linewidth=1, label="formed" if k == 0 else None)
        ax.annotate(heads_formed, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                    va="top", ha="right", color="red")
    ax.set(title="validation loss and formation events", xlabel="step", ylabel="loss (nats/token)")
    if ax.get_legend_handles_labels()[0]:  # no validation loss and nothing formed: nothing to name
        ax.legend(fontsize=7)

    ax = bottom[2]
    for key, label, color in (("copy_accuracy", "copy accuracy", "tab:green"),
                              ("icl_loss_drop", "in-context loss drop (nats)", "tab:purple")):
        values = model_level.get(key) or []
        if any(math.isfinite(v) for v in values):
            ax.plot(steps, model_level[key], marker="o", markersize=3, color=color, label=label)
    ax.set(title="copying and in-context learning", xlabel="step", ylabel="accuracy / nats")
    if ax.get_legend_handles_labels()[0]:  # neither measure exists on some probes (a run without copies)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def router_load_figure(steps: list[int], loads: dict[str, np.ndarray]) -> Figure:
    """One panel per MoE layer: each expert's load (rows) at each capture (columns), as a multiple of its fair
    share (1 = balanced, 0 = the expert gets no token); loads[name] is (experts, captures) of shares."""
    n = len(loads)
    n_experts = max(v.shape[0] for v in loads.values())
    # drawn once, at the end of a run: large enough to read (about 650 px wide at the least), however few captures
    fig = Figure(figsize=(min(max(6.5, 4.0 + 0.3 * len(steps)), 14), 1.2 + (0.32 * n_experts + 0.9) * n), dpi=100,
                 layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    top = max(2.0, max(float(v.max()) * v.shape[0] for v in loads.values()))
    image = None
    for ax, (name, share) in zip(axes, loads.items(), strict=True):
        image = ax.imshow(share * share.shape[0], aspect="auto", cmap=SEQUENTIAL, vmin=0.0, vmax=top,
                          interpolation="nearest")
        ax.set_ylabel(f"{name.replace('layer', 'layer ')}\nexpert", fontsize=10)
        ax.set_yticks(range(share.shape[0]), [str(e) for e in range(share.shape[0])], fontsize=9)
        shown = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int))
        ax.set_xticks(shown, [str(steps[i]) for i in shown], fontsize=9)
    axes[-1].set_xlabel("step", fontsize=10)
    axes[0].set_title("router load per expert (x fair share: 1 = balanced)", fontsize=11)
    fig.colorbar(image, ax=list(axes), label="load / fair share")
    return fig
