"""Where a run's time goes besides training steps: start-up, each evaluation, sampling, checkpoints.

metrics.json's `timing` block is Timings.summary(): a user who sees total_s far above wall_s finds here which
fixed cost it was, without a profiler.
"""

from __future__ import annotations

import contextlib
import time


class Timings:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}  # kind -> seconds, summed
        self.counts: dict[str, int] = {}
        self.evals: list[float] = []  # seconds of each evaluation, in order (validation loss and evaluators)

    def add(self, kind: str, seconds: float) -> None:
        self.totals[kind] = self.totals.get(kind, 0.0) + seconds
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @contextlib.contextmanager
    def measure(self, kind: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, time.perf_counter() - start)

    def summary(self) -> dict:
        """{kind}_s totals and {kind}_count for every kind seen, and eval_s_each (one per evaluation)."""
        out: dict = {}
        for kind, seconds in self.totals.items():
            out[f"{kind}_s"] = round(seconds, 4)
            out[f"{kind}_count"] = self.counts[kind]
        if self.evals:
            out["eval_s_each"] = [round(s, 4) for s in self.evals]
        return out
