"""Where metrics go: one interface, a JSONL file and TensorBoard behind it, fanned out by MetricSinks.

The run owns exactly one TensorBoard writer (``MetricSinks.tensorboard``); monitors and the trainer
write through it rather than opening writers of their own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from llmlab.files import truncate_jsonl


class Sink:
    """A no-op sink; subclasses override what they record."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink(Sink):
    """metrics.jsonl: one JSON object per logged step, written through to the file as it is logged, so a reader
    (a sweep job without a progress bar, `tail -f`, a plot) sees every row at once; readers skip a torn last line."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None:
            truncate_jsonl(path, resume_step)  # rows past the checkpoint: the resumed run logs them again
        self.file = open(path, "a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()  # a few hundred bytes per log step: cheap, and the row is on disk if the process dies

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink(Sink):
    def __init__(self, log_dir: Path, resume_step: int | None = None):
        # purge_step drops events a crashed run logged after its last checkpoint.
        self.writer = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        # TensorBoard renders text as Markdown; four leading spaces keep it verbatim.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricSinks(Sink):
    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def add(self, sink: Sink) -> None:
        """One more sink (the run adds its files once nothing can refuse it any more)."""
        self.sinks.append(sink)

    @property
    def tensorboard(self) -> SummaryWriter | None:
        return next((s.writer for s in self.sinks if isinstance(s, TensorBoardSink)), None)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_scalars(step, scalars)

    def log_text(self, step: int, tag: str, text: str) -> None:
        for s in self.sinks:
            s.log_text(step, tag, text)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()
