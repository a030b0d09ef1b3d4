"""Figures for training monitors, built with matplotlib's object API (Figure + Agg canvas) only.

Monitors render these in background processes (llmlab.monitors.pool) or threads while training runs, so
pyplot (global, not thread-safe state) is never imported here, nor torch (render processes stay light), and
figures stay small (80 dpi, a few inches) to be cheap to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 80
MAX_LABELS = 64  # more tick labels than this are unreadable, so none are drawn
GRID_MAX_LABELS = 32  # panels in a grid are small: stricter limit
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
        # Save the already drawn buffer: fig.savefig would lay out and draw everything a second time.
        mpimg.imsave(path, rgba, format="png")
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
    """One (T, T) attention map: rows are queries, columns keys."""
    p = np.asarray(probs, dtype=float)
    fig = _figure(5.0, 4.4)
    ax = fig.add_subplot()
    im = ax.imshow(p, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, interpolation="nearest")
    if labels:
        _tick_labels(ax, labels, MAX_LABELS, _label_fontsize(len(labels)))
    ax.set(title=title, xlabel="key", ylabel="query")
    fig.colorbar(im, ax=ax, shrink=0.85)
    return fig


def _panel_grid(maps: np.ndarray, titles: list[str], cols: int, title: str, labels: list[str] | None) -> Figure:
    """Square maps in a rows x cols grid on one shared 0..1 colour scale."""
    n = len(maps)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    panel = 2.0 if cols <= 4 else 1.6  # shrink panels as the grid widens so the figure stays modest
    fig = _figure(0.8 + panel * cols, 0.5 + panel * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    fontsize = _label_fontsize(maps.shape[-1]) - 2
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(maps[i], cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(titles[i], fontsize=8)
        # Ticks on the outer panels only: each tick costs layout time, and inner ones would only repeat them.
        _tick_labels(ax, labels, GRID_MAX_LABELS, fontsize, x=i + cols >= n, y=i % cols == 0)
    fig.colorbar(im, ax=axes, shrink=0.7)
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


def router_load_figure(steps: list[int], loads: dict[str, np.ndarray]) -> Figure:
    """One panel per MoE layer: each expert's load (rows) at each capture (columns), as a multiple of its fair
    share (1 = balanced, 0 = the expert gets no token); loads[name] is (experts, captures) of shares."""
    n = len(loads)
    n_experts = max(v.shape[0] for v in loads.values())
    fig = _figure(min(3 + 0.25 * len(steps), 12), 0.9 + (0.3 * n_experts + 0.6) * n)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    top = max(2.0, max(float(v.max()) * v.shape[0] for v in loads.values()))
    image = None
    for ax, (name, share) in zip(axes, loads.items(), strict=True):
        image = ax.imshow(share * share.shape[0], aspect="auto", cmap=SEQUENTIAL, vmin=0.0, vmax=top,
                          interpolation="nearest")
        ax.set_ylabel(f"{name.replace('layer', 'layer ')}\nexpert", fontsize=8)
        ax.set_yticks(range(share.shape[0]), [str(e) for e in range(share.shape[0])], fontsize=7)
        shown = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
        ax.set_xticks(shown, [str(steps[i]) for i in shown], fontsize=7)
    axes[-1].set_xlabel("step", fontsize=8)
    axes[0].set_title("router load per expert (x fair share)", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="load / fair share")
    return fig
