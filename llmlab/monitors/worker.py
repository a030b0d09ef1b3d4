"""A small thread pool for monitor jobs: bounded, drop-oldest, never blocks the training thread.

Plotting and file writing run here so training does not wait for matplotlib or the disk. When the
queue is full the oldest pending job is dropped and counted: a slow disk costs figures, not steps
and not unbounded memory. ``max_workers=0`` runs each job inline (tests, debugging).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class BackgroundWorker:
    def __init__(self, max_workers: int = 2, max_pending: int = 64,
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.max_pending = max_pending
        self.on_error = on_error or (lambda owner, exc: None)
        self.dropped = 0
        self.completed = 0
        self._jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self._active = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"llmlab-monitor-{i}", daemon=True)
                         for i in range(max_workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, owner: str, job: Callable[[], None]) -> None:
        """Queue job (owner names the monitor, for error reports); drop the oldest job if full."""
        if not self._threads:
            self._run(owner, job)
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("BackgroundWorker.submit after close")
            if len(self._jobs) >= self.max_pending:
                self._jobs.popleft()
                self.dropped += 1
            self._jobs.append((owner, job))
            self._cond.notify_all()  # flush() waits on the same condition; wake a worker for sure

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + self._active

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has run; False if timeout passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and self._active == 0, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then stop the threads. Safe to call twice."""
        flushed = self.flush(timeout) if self._threads else True
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        return flushed

    def _run(self, owner: str, job: Callable[[], None]) -> None:
        try:
            job()
            self.completed += 1
        except BaseException as exc:  # a job's failure is its monitor's problem, never the worker's
            self.on_error(owner, exc)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return  # closed and drained
                owner, job = self._jobs.popleft()
                self._active += 1
            try:
                self._run(owner, job)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
