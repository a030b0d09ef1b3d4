"""The sink interface, the JSONL sink and the fan-out (MetricSinks); TensorBoard and W&B are in their own modules.

The run owns one TensorBoard writer, inside its TensorBoardSink; the trainer and the monitors log through sinks and
never hold a writer of their own. What only TensorBoard shows (the Custom Scalars layout, HParams) is asked of
`MetricSinks.tensorboard`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmlab.files import truncate_jsonl


class Sink:
    """A no-op sink; subclasses override what they record. Images and histograms: what a sink can show of them."""

    tensorboard = None  # a TensorBoard sink's SummaryWriter, for what only TensorBoard shows

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def log_image(self, step: int, tag: str, image) -> None:
        """image: (H, W, C) uint8, as the monitors' figure pool draws it."""

    def log_histogram(self, step: int, tag: str, counts, edges, stats: dict) -> None:
        """counts per bucket between edges (numpy), with the values' exact min, max, mean and std."""

    def log_summary(self, step: int, scalars: dict[str, float]) -> None:
        """The run's final figures (metrics.json holds them too), logged once at the end."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink(Sink):
    """One JSON object per logged row (metrics.jsonl: the trainer's; monitors.jsonl: the monitors'), written through
    to the file as it is logged, so a reader (a sweep job without a progress bar, `tail -f`, a plot) sees every row
    at once; readers skip a torn last line."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None:
            truncate_jsonl(path, resume_step)  # rows past the checkpoint: the resumed run logs them again
        self.file = open(path, "a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()  # a few hundred bytes per log step: cheap, and the row is on disk if the process dies

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class MetricSinks(Sink):
    """Every call goes to each sink in turn."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def add(self, sink: Sink) -> None:
        """One more sink (the run adds its files once nothing can refuse it any more)."""
        self.sinks.append(sink)

    @property
    def tensorboard(self):
        return next((s.tensorboard for s in self.sinks if s.tensorboard is not None), None)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_scalars(step, scalars)

    def log_text(self, step: int, tag: str, text: str) -> None:
        for s in self.sinks:
            s.log_text(step, tag, text)

    def log_image(self, step: int, tag: str, image) -> None:
        for s in self.sinks:
            s.log_image(step, tag, image)

    def log_histogram(self, step: int, tag: str, counts, edges, stats: dict) -> None:
        for s in self.sinks:
            s.log_histogram(step, tag, counts, edges, stats)

    def log_summary(self, step: int, scalars: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_summary(step, scalars)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()
