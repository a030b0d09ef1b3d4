"""Figures are drawn in separate, lowest-priority processes.

matplotlib holds the GIL while it draws, so figures drawn on a thread stall the training thread
between its kernels; and on a small CPU every core is busy training. A process of the idle
scheduling class shares no GIL and gets only the CPU time that training leaves idle. The processes import only
numpy and matplotlib (llmlab.monitors.plots), never torch. ``processes=0`` draws inline.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _lower_priority() -> None:
    """SCHED_IDLE where Linux offers it (runs only on otherwise idle cores), else the lowest nice level."""
    try:
        os.nice(19)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not on this platform: still correct, only less polite
        pass


def draw(figure: str, path: str | Path, want_image: bool, kwargs: dict) -> np.ndarray | None:
    """Build plots.<figure>_figure(**kwargs), write it to path; the RGB pixels if want_image."""
    from llmlab.monitors import plots

    image = plots.render(getattr(plots, f"{figure}_figure")(**kwargs), Path(path))
    return image if want_image else None


class FigurePool:
    def __init__(self, processes: int = 2):
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:  # started on first use: runs without figures never pay for it
            self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_lower_priority)
        return self._executor

    def draw_all(self, jobs: list[tuple[str, Path, bool, dict]]) -> list[np.ndarray | None]:
        """Draw (figure, path, want_image, kwargs) jobs in parallel; blocks, so call it from a worker thread."""
        if self.processes == 0:
            return [draw(*job) for job in jobs]
        futures: list[Future] = [self._pool().submit(draw, *job) for job in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=False)
            self._executor = None
