"""The grokking figure: training and held-out accuracy on a log-step axis, the progress measures beneath (weight
norm, the embedding's Fourier sparsity, restricted and excluded loss), the grokking step marked; one column per
run. A run with the progress monitor writes plots/grokking.png when it ends; an experiment draws several runs side
by side with the same function.

    from llmlab.grokking_plots import grokking_figure, run_panels
    grokking_figure({"wd 1.0": run_panels("outputs/<run>")}).savefig("grokking.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from llmlab.monitors.plots import render
from llmlab.monitors.progress_history import GROKKED, grokking_summary, progress_history
from llmlab.plots import read_metrics, series
from llmlab.rundir import RunDir


@dataclass
class RunPanels:
    """What one column of the figure shows: a run's metrics rows and progress monitor captures."""

    rows: list[dict]
    history: list[dict]
    chance: float | None = None  # accuracy of a uniform guess (1/p)

    @property
    def summary(self) -> dict:
        return grokking_summary(self.rows)


def run_panels(run_dir: str | Path) -> RunPanels:
    run_dir = Path(run_dir)
    rows, history = read_metrics(run_dir), progress_history(run_dir)
    p = next((h.get("p") for h in history if h.get("p")), None)
    return RunPanels(rows, history, None if p is None else 1 / p)


def _captured(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(h["step"], h[key]) for h in history
             if isinstance(h.get(key), int | float) and math.isfinite(h[key]) and h["step"] > 0]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _mark(ax: Axes, step: int | None, label: bool = False) -> None:
    if step is not None:
        ax.axvline(step, color="black", linestyle=":", linewidth=1.2,
                   label=f"grokked (held-out acc >= {GROKKED})" if label else None)


def grokking_figure(runs: dict[str, RunPanels], title: str = "", frequencies: int | None = None) -> Figure:
    """Four rows per run column: accuracies, weight norm, Fourier share of the top-k frequencies, and the
    training pairs' loss with its restricted and excluded versions (log y). x: steps, log scale."""
    columns = len(runs)
    fig = Figure(figsize=(4.6 * columns + 0.6, 9.5), dpi=90, layout="constrained")
    axes = fig.subplots(4, columns, squeeze=False, sharex="col")
    top_k = f"top-{frequencies}" if frequencies else "top-k"
    for col, (label, run) in enumerate(runs.items()):
        grokked = run.summary.get("grokked_at")
        acc, norm, fourier, losses = axes[:, col]
        for key, name, color in (("eval/train_accuracy", "train", "tab:blue"),
                                 ("eval/heldout_accuracy", "held-out", "tab:red")):
            xs, ys = series(run.rows, key)
            acc.plot(xs, ys, color=color, label=name)
        if run.chance is not None:
            acc.axhline(run.chance, color="gray", linestyle="--", linewidth=0.8, label="chance (1/p)")
        acc.set_ylim(-0.02, 1.02)
        acc.set_title(f"{label}: " + (f"grokked at step {grokked}" if grokked is not None else "did not grok"),
                      fontsize=10)
        norm.plot(*_captured(run.history, "weight_norm"), color="tab:purple")
        fourier.plot(*_captured(run.history, "fourier_share"), color="tab:green")
        fourier.set_ylim(0, 1.02)
        for key, name, style in (("eval/train_loss", "train loss", {"color": "tab:blue"}),
                                 ("eval/heldout_loss", "held-out loss", {"color": "tab:red"})):
            xs, ys = series(run.rows, key)
            losses.plot(xs, ys, label=name, alpha=0.6, **style)
        for key, name, color in (("restricted_loss", "restricted (train)", "tab:green"),
                                 ("excluded_loss", "excluded (train)", "tab:orange")):
            losses.plot(*_captured(run.history, key), color=color, label=name, linewidth=1.8)
        if any(ax.lines for ax in (losses,)):
            losses.set_yscale("log")
        for row, ax in enumerate((acc, norm, fourier, losses)):
            _mark(ax, grokked, label=row == 0)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(("accuracy", "weight norm (L2)", f"embedding energy in\n{top_k} frequencies",
                               "loss (nats)")[row])
        acc.legend(fontsize=7, loc="center left")
        losses.legend(fontsize=7, loc="lower left")
        losses.set_xlabel("step (log scale)")
    if title:
        fig.suptitle(title)
    return fig


def write_grokking_plot(run_dir: str | Path) -> Path | None:
    """<run_dir>/plots/grokking.png; None for a run without modular accuracies or progress captures."""
    run_dir = Path(run_dir)
    run = run_panels(run_dir)
    if not run.history or not run.summary:
        return None
    path = RunDir(run_dir).plot("grokking")
    k = len(run.history[-1].get("top_frequencies", [])) or None
    render(grokking_figure({run_dir.name: run}, frequencies=k), path)
    return path

