"""Modular arithmetic, the grokking task (Power et al. 2022; Nanda et al. 2023): `a op b = c` with c = a op b mod p.

The data needs no tokenizer: its vocabulary is the p numbers (ids 0..p-1, so a number's id is its value), the
operator (id p) and '=' (id p + 1). Every example is the four ids `a op b =`; the target is c at the '=' position
and IGNORE elsewhere, so llmlab's next-token objective trains on the answer alone. All p * p pairs (p * (p - 1)
for division, whose b is never 0) are split once, by the data's own seed, into training and held-out pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.config.schema import ModularDataConfig
from llmlab.data.batch import IGNORE, Batch

SYMBOLS = {"add": "+", "sub": "-", "mul": "x", "div": "/"}


def answers(a: torch.Tensor, b: torch.Tensor, op: str, p: int) -> torch.Tensor:
    """c = a op b mod p, elementwise; division multiplies by b's inverse b^(p-2) mod p (Fermat, p prime)."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        inverse = torch.tensor([pow(int(x), p - 2, p) for x in range(p)])  # inverse[0] = 0 is never used
        return (a * inverse[b]) % p
    raise ValueError(f"unknown operation {op!r} (expected one of {'|'.join(SYMBOLS)})")


@dataclass(frozen=True)
class ModularTask:
    """The task and its split: what the stage trains on and what the monitors and evaluators measure with."""

    p: int
    op: str
    train_pairs: torch.Tensor  # (N_train, 2) int64 rows (a, b)
    heldout_pairs: torch.Tensor  # (N_heldout, 2)

    @property
    def op_id(self) -> int:
        return self.p

    @property
    def equals_id(self) -> int:
        return self.p + 1

    @property
    def vocab_size(self) -> int:
        return self.p + 2

    def inputs(self, pairs: torch.Tensor) -> torch.Tensor:
        """(N, 2) pairs -> (N, 4) ids `a op b =`."""
        n = len(pairs)
        return torch.stack([pairs[:, 0], torch.full((n,), self.op_id), pairs[:, 1], torch.full((n,), self.equals_id)],
                           dim=1)

    def answers(self, pairs: torch.Tensor) -> torch.Tensor:
        return answers(pairs[:, 0], pairs[:, 1], self.op, self.p)

    def batch(self, pairs: torch.Tensor) -> Batch:
        """Inputs `a op b =` and targets that train the answer at the '=' position only."""
        targets = torch.full((len(pairs), 4), IGNORE, dtype=torch.long)
        targets[:, -1] = self.answers(pairs)
        return Batch(self.inputs(pairs), targets)

    def decode(self, ids: list[int]) -> str:
        names = {self.op_id: SYMBOLS[self.op], self.equals_id: "="}
        return " ".join(names.get(i, str(i)) for i in ids)


def all_pairs(p: int, op: str) -> torch.Tensor:
    """Every (a, b) the operation is defined on, row-major: (p * p, 2), or (p * (p - 1), 2) for division."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    return pairs[pairs[:, 1] != 0] if op == "div" else pairs


def modular_task(cfg: ModularDataConfig) -> ModularTask:
    """All pairs, shuffled by cfg.seed; the first int(train_fraction x N) train (at least one of each)."""
    pairs = all_pairs(cfg.p, cfg.op)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed))
    n_train = min(len(pairs) - 1, max(1, int(cfg.train_fraction * len(pairs))))
    return ModularTask(cfg.p, cfg.op, pairs[order[:n_train]], pairs[order[n_train:]])


class ModularBatches:
    """Training batches of the training pairs: all of them every step (full batch, batch_size=None), or
    batch_size pairs without replacement, reshuffled each epoch by a seeded generator that is checkpointed."""

    def __init__(self, task: ModularTask, batch_size: int | None, seed: int):
        self.task, self.batch_size = task, batch_size
        self.full = task.batch(task.train_pairs) if batch_size is None or batch_size >= len(task.train_pairs) \
            else None
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None
        self.at = 0

    def next(self) -> Batch:
        if self.full is not None:
            return self.full
        n = len(self.task.train_pairs)
        if self.order is None or self.at + self.batch_size > n:
            self.order, self.at = torch.randperm(n, generator=self.generator), 0
        chosen = self.order[self.at:self.at + self.batch_size]
        self.at += self.batch_size
        return self.task.batch(self.task.train_pairs[chosen])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "at": self.at}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.at = state["order"], state["at"]
