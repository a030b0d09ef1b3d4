"""Accuracy and loss of a modular-arithmetic model on its training pairs and its held-out pairs (data=modular):
the two curves whose gap is grokking."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from llmlab.data.modular import ModularTask


@torch.no_grad()
def split_scores(model: torch.nn.Module, task: ModularTask, device: torch.device) -> dict[str, float]:
    """{train,heldout}_{accuracy,loss}: argmax and cross-entropy of the answer at the '=' position, over every pair
    of each split (one eval-mode forward of both)."""
    was_training = model.training
    model.eval()
    try:
        pairs = torch.cat([task.train_pairs, task.heldout_pairs])
        logits = model(task.inputs(pairs).to(device))[:, -1].float()  # (N, vocab): the prediction after '='
        answers = task.answers(pairs).to(device)
        losses = F.cross_entropy(logits, answers, reduction="none")
        right = (logits.argmax(-1) == answers).float()
        n = len(task.train_pairs)
        values = torch.stack([right[:n].mean(), losses[:n].mean(), right[n:].mean(), losses[n:].mean()]).tolist()
    finally:
        model.train(was_training)
    return dict(zip(("train_accuracy", "train_loss", "heldout_accuracy", "heldout_loss"), values, strict=True))


class ModularAccuracy:
    """An evaluator: eval/train_accuracy, eval/train_loss, eval/heldout_accuracy, eval/heldout_loss."""

    def __init__(self, model: torch.nn.Module, task: ModularTask, device: torch.device):
        self.model, self.task, self.device = model, task, device

    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in split_scores(self.model, self.task, self.device).items()}
