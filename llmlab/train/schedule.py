"""Learning-rate schedules: pure functions of the step, so they need no state in checkpoints.

Every schedule warms up linearly, then falls from the peak to a floor by max_steps and stays there:
- cosine: half a cosine over all the steps after warmup;
- linear: a straight line over all the steps after warmup;
- wsd (warmup-stable-decay): the peak until the last `decay_steps`, then a straight line to the floor. The lr
  before the decay does not depend on max_steps, so a run checkpointed in its stable phase can be extended
  (resume with a larger trainer.max_steps and trainer.allow_config_change=true) as if it had been planned longer.
"""

from __future__ import annotations

import math

from llmlab.config.schema import TrainerConfig, wsd_decay_steps


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float,
          schedule: str = "cosine", decay_steps: int = 0) -> float:
    """The learning rate for optimizer step `step` (0-based); decay_steps is wsd's only."""
    min_lr = base_lr * min_lr_ratio
    if step < warmup_steps:  # linear warmup from base_lr / warmup_steps up to base_lr
        return base_lr * (step + 1) / warmup_steps
    if step >= max_steps:  # past the planned end: stay at the floor
        return min_lr
    if schedule == "wsd":
        decay_start = max_steps - decay_steps
        if step < decay_start:  # the stable phase: the peak
            return base_lr
        return base_lr + (min_lr - base_lr) * (step - decay_start) / decay_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    if schedule == "linear":
        return base_lr + (min_lr - base_lr) * progress
    # cosine decay from base_lr to the floor over the remaining steps
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def rewarmed(step: int, before: TrainerConfig, now: TrainerConfig) -> str | None:
    """What a resume at `step` under a changed schedule does to a learning rate the old one had brought down (an
    extended run whose decay had begun climbs back towards the peak), or None when it does not rise."""
    old, new = scheduled_lr(step, now.lr, before), scheduled_lr(step, now.lr, now)
    if new <= old * 1.25:
        return None
    return (f"trainer.max_steps={now.max_steps}: the {before.schedule} schedule of the run resumed at step {step} "
            f"had brought the learning rate down to {old:.3g} (its end was step {before.max_steps}); it now steps at "
            f"{new:.3g}, back towards the peak trainer.lr={now.lr:g}. To extend a run without warming it again, "
            "resume from a checkpoint taken before its decay began")


def scheduled_lr(step: int, peak_lr: float, cfg: TrainerConfig) -> float:
    """lr_at with the trainer config's schedule, for a parameter group whose peak is peak_lr."""
    return lr_at(step, peak_lr, cfg.warmup_steps, cfg.max_steps, cfg.floor_ratio, cfg.schedule,
                 wsd_decay_steps(cfg) if cfg.schedule == "wsd" else 0)
