"""Objectives: the loss a batch gives. The trainer is the same loop for every stage; a stage picks its objective."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.data.batch import IGNORE, Batch


class Objective:
    """A stage's loss. Subclasses add what their stage needs (a loss mask, a reference model, ...)."""

    def loss(self, model: nn.Module, batch: Batch, record: dict | None = None) -> torch.Tensor:
        """The batch's loss; extra metrics go into record[name] as detached tensors (the trainer averages them)."""
        raise NotImplementedError

    def tokens_in(self, batch: Batch) -> int:
        return batch.input_ids.numel()

    # An objective may own state the next steps depend on (GRPO: its sampling generator and the samples it still
    # trains on); the trainer checkpoints it with its own, so a resumed run continues exactly. Most own none.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NextTokenObjective(Objective):
    """Pretraining and SFT: mean cross-entropy of the next tokens; IGNORE targets (SFT's padding and
    non-assistant tokens) are left out."""

    def loss(self, model: nn.Module, batch: Batch, record: dict | None = None) -> torch.Tensor:
        logits = model(batch.input_ids)  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)
