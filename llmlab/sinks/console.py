"""The console (and so run.log): one line per evaluation, so a run without a progress bar, and a sweep job's log,
say how the loss went while it trained. Every other step's row is in metrics.jsonl and on the progress bar."""

from __future__ import annotations

import logging

from llmlab.sinks.base import Sink

log = logging.getLogger(__name__)


class ConsoleSink(Sink):
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if "val/loss" not in scalars:  # not an evaluation row
            return
        shown = {k: v for k, v in scalars.items() if k == "train/loss" or k.split("/")[0] in ("val", "eval")}
        log.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None))
