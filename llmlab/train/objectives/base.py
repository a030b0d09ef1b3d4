"""What an objective is, and the next-token loss of pretraining and SFT."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.data.batch import IGNORE, Batch
from llmlab.train.distributed import unwrap


class Objective:
    """A stage's loss. Subclasses add what their stage needs (a loss mask, a reference model, ...)."""

    mean_over_tokens = False  # the loss is the mean over the batch's scored targets (so bits per byte apply)

    def loss(self, model: nn.Module, batch: Batch, record: dict | None = None) -> torch.Tensor:
        """The batch's loss; extra metrics go into record[name] as detached tensors (the trainer averages them)."""
        raise NotImplementedError

    def tokens_in(self, batch: Batch) -> int:
        """Tokens the batch put through the model (throughput)."""
        return batch.input_ids.numel()

    def targets_in(self, batch: Batch) -> int:
        """What loss() is a mean over: the trainer weighs each micro-batch by its share of the step's global count
        (every micro-batch and rank), so a gradient does not depend on how a batch was split."""
        return batch.input_ids.shape[0]

    # An objective may own state the next steps depend on (GRPO: its sampling generator and the samples it still
    # trains on); the trainer checkpoints it with its own, so a resumed run continues exactly. Most own none.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def with_auxiliary(model: nn.Module, loss: torch.Tensor, record: dict | None = None) -> torch.Tensor:
    """loss plus the auxiliary training loss the model's last forward left (a MoE's load balancing and router
    z-loss: Transformer.auxiliary_loss), in training mode only, so validation losses stay the objective's own
    and compare across dense and MoE models. Recorded as train/objective_loss and train/aux_loss."""
    auxiliary = getattr(unwrap(model), "auxiliary_loss", None)
    extra = auxiliary() if model.training and auxiliary is not None else None
    if extra is None:
        return loss
    if record is not None:
        record.setdefault("train/objective_loss", []).append(loss.detach())
        record.setdefault("train/aux_loss", []).append(extra.detach())
    return loss + extra


class NextTokenObjective(Objective):
    """Pretraining and SFT: mean cross-entropy of the next tokens; IGNORE targets (SFT's padding and
    non-assistant tokens) are left out."""

    mean_over_tokens = True

    def targets_in(self, batch: Batch) -> int:
        return int((batch.targets != IGNORE).sum())

    def loss(self, model: nn.Module, batch: Batch, record: dict | None = None) -> torch.Tensor:
        logits = model(batch.input_ids)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)
        return with_auxiliary(model, loss, record)
