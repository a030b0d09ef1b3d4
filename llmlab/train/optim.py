"""AdamW with weight decay only where it belongs."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from llmlab.config.schema import TrainerConfig


def build_optimizer(model: nn.Module, cfg: TrainerConfig, device: torch.device) -> torch.optim.AdamW:
    """Decay matrices (dim >= 2); leave biases, norm gains and other vectors undecayed."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields tied ones once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)
