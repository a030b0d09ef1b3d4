"""Learning-rate schedule: a pure function of the step, so it needs no state in checkpoints."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """The learning rate for optimizer step `step` (0-based)."""
    min_lr = base_lr * min_lr_ratio
    if step < warmup_steps:  # linear warmup from base_lr / warmup_steps up to base_lr
        return base_lr * (step + 1) / warmup_steps
    if step >= max_steps:  # past the planned end: stay at the floor
        return min_lr
    # cosine decay from base_lr to the floor over the remaining steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
