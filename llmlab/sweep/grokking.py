"""A grokking sweep's figure: one column per setting (e.g. with and without weight decay) for one seed, drawn
with llmlab.grokking_plots; the sweep report writes it as grokking.png beside sweep_summary.md.

    python -m llmlab.sweep.grokking <sweep_dir> [seed] [out.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.figure import Figure

from llmlab.grokking_plots import grokking_figure, run_panels
from llmlab.monitors.plots import render
from llmlab.rundir import RunDir
from llmlab.sweep.collect import SEED, find_jobs, swept_keys


def sweep_grokking_figure(sweep_dir: str | Path, seed: str | None = None) -> Figure | None:
    """The figure of a sweep's jobs of one seed (default: the first seed swept), a column per setting of the other
    swept keys; None when no job has progress captures."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    keys = swept_keys(jobs, sweep_dir)
    seeds = [job.overrides.get(SEED) for job in jobs if SEED in job.overrides]
    chosen = seed if seed is not None else (seeds[0] if seeds else None)
    runs = {}
    for job in jobs:
        if chosen is not None and job.overrides.get(SEED) != chosen:
            continue
        run = run_panels(job.path)
        if run.history and run.summary:
            label = ", ".join(f"{k.rsplit('.', 1)[-1]} {job.overrides.get(k)}" for k in keys if k != SEED) or job.name
            runs[label] = run
    if not runs:
        return None
    first = next(iter(runs.values()))
    k = len(first.history[-1].get("top_frequencies", [])) or None
    title = task_title(next(job.path for job in jobs if run_panels(job.path).history)) or sweep_dir.name
    return grokking_figure(runs, title=title + (f", seed {chosen}" if chosen is not None else ""), frequencies=k)


def task_title(job_dir: Path) -> str | None:
    """'(a + b) mod 113, 30% of the pairs train' from a job's resolved config; None where it has none."""
    from omegaconf import OmegaConf

    config = RunDir(job_dir).config
    if not config.is_file():
        return None
    data = OmegaConf.load(config).get("data", {})
    symbol = {"add": "+", "sub": "-", "mul": "x", "div": "/"}.get(data.get("op"))
    if symbol is None:
        return None
    return f"(a {symbol} b) mod {data.get('p')}, {data.get('train_fraction', 0):.0%} of the pairs train"


def write_sweep_grokking_plot(sweep_dir: str | Path, seed: str | None = None, path: str | Path | None = None
                              ) -> Path | None:
    """<sweep_dir>/grokking.png (or path): sweep_grokking_figure; None when no job has progress captures."""
    fig = sweep_grokking_figure(sweep_dir, seed)
    if fig is None:
        return None
    path = Path(path) if path is not None else Path(sweep_dir) / "grokking.png"
    render(fig, path)
    return path


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 3:
        sys.exit("usage: python -m llmlab.sweep.grokking <sweep_dir> [seed] [out.png]")
    path = write_sweep_grokking_plot(argv[0], argv[1] if len(argv) > 1 else None, argv[2] if len(argv) > 2 else None)
    sys.exit(f"{argv[0]}: no job with progress monitor captures") if path is None else print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
