"""Batches of encoded conversations for SFT (one sequence per sample) and DPO (a chosen and a rejected one).

Samples are padded, not packed: each row is one sample from position 0, so no sample can attend to another
and the model's causal SDPA path needs no document mask; a row's logits are the ones it would get alone.
Padding costs compute, so batches are grouped by length: each epoch's shuffled order is cut into pools of
POOL batches, each pool sorted by length and cut into batches, and the batches shuffled again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmlab.config.errors import ConfigError
from llmlab.data.batch import IGNORE, Batch
from llmlab.data.chat_template import Encoded

POOL = 50  # batches per length-sorting pool: enough to group lengths, few enough to keep batches varied

Item = Sequence[Encoded]  # one sample: (conversation,) for SFT, (chosen, rejected) for DPO


def truncate(encoded: Encoded, max_len: int) -> Encoded:
    return Encoded(encoded.ids[:max_len], encoded.loss_mask[:max_len])


def collate(items: Sequence[Item], pad_id: int) -> Batch:
    """input_ids and targets (B * len(item), T): the first members of every item, then the second ones, ..."""
    rows = [item[k] for k in range(len(items[0])) for item in items]
    width = max(len(r.ids) for r in rows) - 1
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        ids = torch.tensor(row.ids, dtype=torch.long)
        n = len(row.ids) - 1
        inputs[i, :n] = ids[:-1]
        targets[i, :n] = ids[1:].masked_fill(~torch.tensor(row.loss_mask[1:]), IGNORE)
    return Batch(inputs, targets)


class ChatBatches:
    """Endless length-grouped batches over items, reshuffled each epoch, resumable from (epoch, index).

    Under data parallelism the batches are global (batch_size x world_size items) and each rank collates its
    own slice of each, so ranks see distinct samples of similar length.
    """

    def __init__(self, items: Sequence[Item], batch_size: int, pad_id: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(items) < batch_size * world_size:
            ranks = f" x {world_size} processes" if world_size > 1 else ""
            raise ConfigError(f"trainer.batch_size={batch_size}{ranks} is more than the {len(items)} training samples")
        self.rank, self.per_rank = rank, batch_size
        batch_size *= world_size
        self.items, self.batch_size, self.pad_id, self.seed = items, batch_size, pad_id, seed
        # each item's longest sequence: a store of encoded samples (llmlab/data/chat_store.py) knows it unread
        self.lengths = getattr(items, "lengths", None)
        if self.lengths is None:
            self.lengths = [max(len(e.ids) for e in item) for item in items]
        self.epoch, self.index = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.items), generator=gen).tolist()
        pool, batches = self.batch_size * POOL, []
        for start in range(0, len(order) - self.batch_size + 1, pool):
            chunk = sorted(order[start:start + pool], key=lambda i: self.lengths[i])
            batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk) - self.batch_size + 1,
                                                                   self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def next(self) -> Batch:
        if self.index == len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        batch = self._order[self.index][self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        self.index += 1
        return collate([self.items[i] for i in batch], self.pad_id)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._epoch_order(self.epoch)


def fixed_batches(items: Sequence[Item], batch_size: int, pad_id: int, n_batches: int) -> list[Batch]:
    """The first n_batches * batch_size items (sorted by length, so little padding), the same every eval."""
    chosen = sorted(items[: n_batches * batch_size], key=lambda item: max(len(e.ids) for e in item))
    return [collate(chosen[i:i + batch_size], pad_id) for i in range(0, len(chosen), batch_size)]
