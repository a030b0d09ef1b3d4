"""Figures are drawn in separate, lowest-priority processes.

matplotlib holds the GIL while it draws, so figures drawn on a thread stall the training thread
between its kernels; and on a small CPU every core is busy training. A process of the idle
scheduling class shares no GIL and gets only the CPU time that training leaves idle. The processes import only
numpy and matplotlib (llmlab.monitors.plots), never torch. ``processes=0`` draws inline.

On a machine others keep busy, idle-class processes may get no CPU at all, so figures still queued when training
ends would keep the run waiting for minutes. ``hurry()`` (the end of a run) has the waiting threads draw every
figure not yet done themselves, at normal priority, and the idle processes are stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


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


def _context() -> multiprocessing.context.BaseContext:
    """Processes that start light. A spawned process first imports the parent's main module (`python -m
    llmlab.run` brings in Hydra and torch) at normal priority, before it can lower its own: seconds of CPU taken
    from training on a small machine. A fork server's processes import only what drawing needs."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


class FigurePool:
    def __init__(self, processes: int = 2):
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._hurry = threading.Event()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:  # started on first use: runs without figures never pay for it
            self._executor = ProcessPoolExecutor(self.processes, mp_context=_context(),
                                                 initializer=_lower_priority)
        return self._executor

    def hurry(self) -> None:
        """From now on every figure not yet drawn is drawn by the thread that waits for it (training is over)."""
        self._hurry.set()

    def draw_all(self, jobs: list[tuple[str, Path, bool, dict]]) -> list[np.ndarray | None]:
        """Draw (figure, path, want_image, kwargs) jobs in parallel; blocks, so call it from a worker thread."""
        if self.processes == 0 or self._hurry.is_set():
            return [draw(*job) for job in jobs]
        try:
            futures: list[Future] = [self._pool().submit(draw, *job) for job in jobs]
            return [self._result(future, job) for future, job in zip(futures, jobs, strict=True)]
        except (BrokenProcessPool, RuntimeError, OSError) as exc:  # the processes could not start or died
            self._give_up(exc)
            return [draw(*job) for job in jobs]

    def _give_up(self, exc: BaseException) -> None:
        """Draw inline from now on, and say why once: the figures go on, only not in processes of their own."""
        if self.processes == 0:
            return
        self.processes = 0
        executor, self._executor = self._executor, None
        if executor is not None:  # broken already: its futures fail by themselves (cancelling them races its thread)
            executor.shutdown(wait=False)
        log.warning(f"warning: figures are drawn in this process from now on: their worker processes failed "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}). A script "
                    "that trains at its top level needs an `if __name__ == \"__main__\":` guard, as every script "
                    "that starts processes does")

    def _result(self, future: Future, job: tuple) -> np.ndarray | None:
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                if self._hurry.is_set():  # a process of the idle class may not get the CPU for minutes
                    # not cancelled: a cancelled future the pool then fails (a process that died) makes the pool's
                    # own thread raise InvalidStateError (Python 3.11); close() stops the processes anyway
                    return draw(*job)  # writes the same file; render replaces files whole

    def close(self) -> None:
        if self._executor is None:
            return
        if self._hurry.is_set():  # what the idle processes still hold was drawn by the waiting threads
            processes = list(getattr(self._executor, "_processes", {}).values())
            self._executor.shutdown(wait=False)
            for process in processes:
                process.terminate()
        else:
            self._executor.shutdown(wait=True, cancel_futures=False)
        self._executor = None
