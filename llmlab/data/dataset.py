"""Batches drawn from token streams (memory-mapped: llmlab.data.pipeline writes and checks them).

Training batches are random windows drawn from a seeded torch.Generator whose state goes into every
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
Validation batches are fixed windows spread evenly over the validation stream: the same every eval.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from llmlab.config.errors import ConfigError
from llmlab.data.batch import Batch

log = logging.getLogger(__name__)


class TrainBatches:
    """Random (input, target) windows of seq_len tokens from one stream.

    Under data parallelism every rank draws the same global batch of batch_size x world_size windows from the
    same generator and keeps its own slice: ranks see distinct data, the data position is one shared state,
    and N ranks train on exactly what one process with an N times larger batch would.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(tokens) < batch_size * (seq_len + 1):
            raise ConfigError(
                f"trainer.batch_size={batch_size} x model.context_length={seq_len} needs at least "
                f"{batch_size * (seq_len + 1)} training tokens, the data has {len(tokens)}: "
                "use more data or smaller batch/context"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        starts = torch.randint(0, len(self.tokens) - self.seq_len, (self.batch_size * self.world_size,),
                               generator=self.generator)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return windows(self.tokens, mine.tolist(), self.seq_len)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> Batch:
    block = torch.from_numpy(np.stack([tokens[s:s + seq_len + 1].astype(np.int64) for s in starts]))
    return Batch(block[:, :-1], block[:, 1:])  # (B, T) inputs and next-token targets


def validation_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int, warn: bool = True
) -> list[Batch]:
    """n_batches fixed batches of windows spread evenly over the stream.

    At most as many windows as the stream holds without overlap (never fewer than one batch: a short stream
    still gives one, of overlapping windows): asked for more, it evaluates the batches the stream fills rather
    than the same tokens again, and says so in one warning line (warn=False: not from this process).
    """
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            f"model.context_length={seq_len} is longer than the validation data ({len(tokens)} tokens): "
            "use more validation data or a shorter context"
        )
    fit = len(tokens) // (seq_len + 1)  # windows of seq_len + 1 tokens (inputs and targets) without overlap
    most = max(1, fit // batch_size)
    if n_batches > most:
        if warn:
            log.warning(f"warning: trainer.eval_batches={n_batches} is more than the validation data can fill: "
                        f"its {len(tokens)} tokens hold {fit} windows of model.context_length={seq_len} (+1) without "
                        f"overlap; evaluating {most} batch{'' if most == 1 else 'es'} of {batch_size} (set "
                        f"trainer.eval_batches<={most}, or give more validation data)")
        n_batches = most
    starts = np.linspace(0, len(tokens) - seq_len - 1, n_batches * batch_size).astype(np.int64).tolist()
    return [
        windows(tokens, starts[i * batch_size:(i + 1) * batch_size], seq_len) for i in range(n_batches)
    ]
