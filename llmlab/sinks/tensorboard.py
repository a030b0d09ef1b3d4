"""TensorBoard: every scalar, text, image and histogram of a run, in <run>/tb/."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from llmlab.sinks.base import Sink


class TensorBoardSink(Sink):
    def __init__(self, log_dir: Path, resume_step: int | None = None):
        # purge_step drops events a crashed run logged after its last checkpoint.
        self.tensorboard = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.tensorboard.add_scalar(tag, value, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        # TensorBoard renders text as Markdown; four leading spaces keep it verbatim.
        self.tensorboard.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def log_image(self, step: int, tag: str, image) -> None:
        self.tensorboard.add_image(tag, image, step, dataformats="HWC")

    def log_histogram(self, step: int, tag: str, counts, edges, stats: dict) -> None:
        """A histogram from counts made on the device: no tensor ever reaches numpy."""
        num = float(counts.sum())
        if num == 0:
            return
        # sum and sum of squares from the exact moments: sum = n*mean, sumsq = n*(std^2 + mean^2)
        mean, std = stats["mean"], stats["std"]
        self.tensorboard.add_histogram_raw(tag, min=stats["min"], max=stats["max"], num=num, sum=num * mean,
                                           sum_squares=num * (std**2 + mean**2), bucket_limits=edges[1:].tolist(),
                                           bucket_counts=counts.tolist(), global_step=step)

    def log_summary(self, step: int, scalars: dict[str, float]) -> None:
        self.log_scalars(step, scalars)

    def flush(self) -> None:
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()
