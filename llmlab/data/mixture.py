"""Batches from several token streams, each window's source drawn by weight (data=mix).

One seeded torch.Generator draws, for the whole global batch, each window's source (by weight) and its position
in that source; its state is checkpointed, so a resumed run draws the same windows. Each source keeps its own
shards: a window never spans two sources. The weights hold in expectation; the counts drawn so far are kept
(and checkpointed) so a run can report what it trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from llmlab.config.errors import ConfigError
from llmlab.data.batch import Batch
from llmlab.data.dataset import windows


class MixtureBatches:
    def __init__(self, streams: list, weights: list[float], batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1, names: list[str] | None = None):
        names = names or [str(i) for i in range(len(streams))]
        for stream, name in zip(streams, names):
            if len(stream) < seq_len + 1:
                raise ConfigError(f"data.sources: {name} has {len(stream)} training tokens, fewer than one window "
                                  f"of model.context_length={seq_len} (+1)")
        self.streams, self.batch_size, self.seq_len = streams, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.probs = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.limits = torch.tensor([len(s) - seq_len for s in streams], dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = [0] * len(streams)  # windows drawn from each source, over all ranks

    def draw(self, n: int) -> tuple[list[int], list[int]]:
        """n (source, start) pairs."""
        which = torch.multinomial(self.probs, n, replacement=True, generator=self.generator)
        where = torch.rand(n, generator=self.generator, dtype=torch.float64)
        starts = (where * self.limits[which]).long()
        for i in which.tolist():
            self.drawn[i] += 1
        return which.tolist(), starts.tolist()

    def next(self) -> Batch:
        which, starts = self.draw(self.batch_size * self.world_size)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rows = [windows(self.streams[w], [s], self.seq_len) for w, s in zip(which[mine], starts[mine])]
        return Batch(torch.cat([r.input_ids for r in rows]), torch.cat([r.targets for r in rows]))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": list(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = list(state.get("drawn", self.drawn))


def mixed_validation_batches(streams: list, weights: list[float], batch_size: int, seq_len: int,
                             n_batches: int) -> list[Batch]:
    """n_batches fixed batches whose windows come from each source by weight (largest remainder, at least one
    window each), spread evenly over each source's validation stream, in source order."""
    n = n_batches * batch_size
    if n < len(streams):
        raise ConfigError(f"trainer.eval_batches={n_batches} x trainer.batch_size={batch_size} gives fewer validation "
                          f"windows than the {len(streams)} sources; evaluate more windows")
    share = np.array(weights) / sum(weights) * n
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero(counts == 0):  # every source is evaluated: its window comes from the largest share
        counts[np.argmax(counts)] -= 1
        counts[i] = 1
    rows = []
    for stream, count in zip(streams, counts):
        if len(stream) < seq_len + 1:
            raise ConfigError(f"model.context_length={seq_len} is longer than a source's validation data "
                              f"({len(stream)} tokens): use more validation data or a shorter context")
        rows += spaced_windows(stream, int(count), seq_len)
    block_x = torch.cat([r.input_ids for r in rows])
    block_y = torch.cat([r.targets for r in rows])
    return [Batch(block_x[i * batch_size:(i + 1) * batch_size], block_y[i * batch_size:(i + 1) * batch_size])
            for i in range(n_batches)]


def spaced_windows(stream, count: int, seq_len: int) -> list[Batch]:
    starts = np.linspace(0, len(stream) - seq_len - 1, count).astype(np.int64).tolist()
    return [windows(stream, [s], seq_len) for s in starts]
