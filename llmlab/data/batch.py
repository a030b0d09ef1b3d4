"""The one batch type every batch source yields, and the contract of a batch source."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

log = logging.getLogger(__name__)

IGNORE = -100  # a target that gives no loss (cross_entropy's ignore_index): padding, prompts, markers


class Batch(NamedTuple):
    """Rows of token ids and their next-token targets, both (B, T). Chat batches mark untrained targets IGNORE;
    preference batches hold the chosen rows, then the rejected ones."""

    input_ids: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.targets.to(device))


class BatchSource(Protocol):
    """Endless training batches whose position is checkpointed, so a resumed run draws the same ones."""

    def next(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ShowFirstBatch:
    """A batch source that prints its first batch (trainer.debug_first_batch), then passes batches through."""

    def __init__(self, source: BatchSource, describe: Callable[[Batch], str]):
        self.source, self.describe = source, describe

    def next(self) -> Batch:
        batch = self.source.next()
        if self.describe is not None:
            log.info(self.describe(batch))
            self.describe = None
        return batch

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
