"""The optimizer: AdamW (weight decay only where it belongs), or Muon for the blocks' matrices with AdamW beside it.

trainer.optimizer=muon splits the trainable parameters in two groups, each parameter in exactly one:
- Muon (torch.optim.Muon, with same-shape matrices batched: llmlab/train/muon.py): the 2-D weight matrices
  inside the transformer blocks (attention q/k/v/o, MLP up/gate/down, and in a mixture of experts each expert's
  matrices, which are 2-D per expert);
- AdamW: everything else: the token embedding (and the output head, tied to it or not), the value embeddings,
  learned positions,
  norm gains, biases, a mixture's router and shared-expert gate (their rows are per-expert logit directions,
  not a hidden layer's map), and LoRA adapters (rank-r matrices whose update Muon would set to r equal singular
  values, overriding the alpha / rank scale LoRA is tuned by; with LoRA, Muon has nothing to train).
Muon orthogonalises each matrix's whole update, so it needs the whole matrix on one process: DDP keeps it,
FSDP shards it (TrainerConfig refuses that pair).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TrainerConfig
from llmlab.train.muon import Muon, ns_dtype_for

NOT_HIDDEN = (".router.", ".shared_gate.", "lora_A", "lora_B")  # 2-D in the blocks, yet trained by AdamW


def is_muon_matrix(name: str, p: torch.Tensor) -> bool:
    """Whether trainer.optimizer=muon gives this parameter (named as in the bare model) to Muon."""
    return p.dim() == 2 and name.startswith("blocks.") and not any(part in name for part in NOT_HIDDEN)


def split_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(Muon's, AdamW's) trainable parameters with their names; a tied parameter once, in its first name."""
    muon, adamw = [], []
    for name, p in model.named_parameters():  # yields tied parameters once
        if p.requires_grad:
            (muon if is_muon_matrix(bare_name(name), p) else adamw).append((name, p))
    return muon, adamw


def bare_name(name: str) -> str:
    """A parameter's name without the prefix DDP adds (module.); torch.compile wraps the blocks alone, so their
    parameters keep their names."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def adamw(params: list[nn.Parameter], cfg: TrainerConfig, device: torch.device) -> torch.optim.AdamW:
    """Decay matrices (dim >= 2); leave biases, norm gains and other vectors undecayed."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


class MuonWithAdamW:
    """Muon and AdamW as one optimizer to the loop: step, zero_grad, param_groups (Muon's first) and one state
    dict holding both. The GradScaler and the checkpointer use it as they use a torch optimizer."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = {"muon": muon, "adamw": adamw}

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts.values() for group in part.param_groups]

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.parts):  # an AdamW-only checkpoint has "state" and "param_groups"
            raise KeyError(f"expected the optimizer state of Muon and AdamW, found keys {sorted(state)}")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


Optimizer = torch.optim.AdamW | MuonWithAdamW


def build_optimizer(model: nn.Module, cfg: TrainerConfig, device: torch.device) -> Optimizer:
    """AdamW for every trainable parameter, or (optimizer=muon) Muon and AdamW as the module docstring says."""
    if cfg.optimizer == "adamw":
        return adamw([p for p in model.parameters() if p.requires_grad], cfg, device)
    muon_params, adamw_params = split_parameters(model)
    if not muon_params:
        raise ConfigError("trainer.optimizer=muon: no trainable matrix in the blocks for Muon (LoRA adapters, "
                          "routers and embeddings train with AdamW); use trainer.optimizer=adamw")
    m = cfg.muon
    muon = Muon([p for _, p in muon_params], lr=m.lr, weight_decay=m.weight_decay, momentum=m.momentum,
                nesterov=m.nesterov, ns_steps=m.ns_steps, adjust_lr_fn=m.adjust_lr,
                ns_dtype=ns_dtype_for(m.ns_dtype, device), batched=m.ns_batched)
    return MuonWithAdamW(muon, adamw([p for _, p in adamw_params], cfg, device))


def peak_lrs(optimizer: Optimizer, cfg: TrainerConfig) -> list[float]:
    """Each of optimizer.param_groups' peak learning rate: trainer.muon.lr for Muon's, trainer.lr for AdamW's."""
    if isinstance(optimizer, MuonWithAdamW):
        return [cfg.muon.lr if name == "muon" else cfg.lr
                for name, part in optimizer.parts.items() for _ in part.param_groups]
    return [cfg.lr] * len(optimizer.param_groups)
