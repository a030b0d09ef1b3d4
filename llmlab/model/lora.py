"""LoRA: train a low-rank update (alpha / rank) * B @ A beside each frozen projection weight W.

apply_lora swaps chosen nn.Linear layers for LoRALinear in place and freezes everything else. A LoRALinear
holds the very Parameter objects of the layer it replaced, so base state_dict names stay as they were
("blocks.0.attn.q_proj.weight") and the adapters only add "...q_proj.lora_A" / "...q_proj.lora_B".
merge_lora folds the update into W and swaps plain nn.Linear layers back, for inference or export.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ADAPTER_SUFFIXES = (".lora_A", ".lora_B")
HEAD = "lm_head"  # the output head is never adapted: with tied embeddings it is the token table itself


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T, with W and b frozen and shared with the base layer.

    B starts at zero, so a fresh adapter returns exactly what the base layer did.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate and initialise a new weight
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))  # (rank, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # (out, rank)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does for its own weight
        self.lora_dropout = nn.Dropout(dropout)  # identity in eval mode
        self.train(base.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., rank) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to W, (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def _matches(name: str, target: str) -> bool:
    """Whole dotted components only: "q_proj" and "attn.q_proj" match "blocks.0.attn.q_proj", "proj" does not."""
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Adapt every nn.Linear whose name ends with one of targets ("all": every one but lm_head), freeze the rest.

    Returns the adapted module names. Hooks registered on a replaced nn.Linear itself stay on the old
    object; those on its parents (block.attn, block.mlp) are untouched.
    """
    if rank < 1:  # checked before anything is frozen, so a bad call leaves the model as it was
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("LoRA targets is empty: give layer names such as ['q_proj', 'v_proj'] or ['all']")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA adapters: merge_lora it before applying new ones")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and not _matches(name, HEAD)}
    if "all" in targets:
        chosen = list(linears)
    else:
        available = sorted({name.rpartition(".")[2] for name in linears})
        for target in targets:
            if not any(_matches(name, target) for name in linears):
                raise ValueError(f"LoRA target {target!r} matches no linear layer; available: {', '.join(available)}")
        chosen = [name for name in linears if any(_matches(name, t) for t in targets)]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        _set_submodule(model, name, LoRALinear(linears[name], rank, alpha, dropout))
    return chosen


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold each adapter into its weight in place (W += scale * B @ A) and put a plain nn.Linear back.

    The nn.Linear holds the same weight and bias Parameters (still frozen), so tying and names survive.
    Returns how many adapters were merged.
    """
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, lora in adapted:
        lora.weight.add_(lora.delta_weight())  # in place: the same Parameter object, wherever it is shared
        plain = nn.Linear(lora.in_features, lora.out_features, bias=lora.bias is not None, device="meta")
        plain.weight, plain.bias = lora.weight, lora.bias  # the meta placeholders are dropped, never allocated
        plain.train(lora.training)
        _set_submodule(model, name, plain)
    return len(adapted)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (names ending lora_A / lora_B); like state_dict, they share the model's memory."""
    return {name: t for name, t in model.state_dict().items() if name.endswith(ADAPTER_SUFFIXES)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors into a model that apply_lora already adapted the same way; names must match exactly."""
    expected = set(lora_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        hint = "" if expected else " (the model has no adapters: call apply_lora first)"
        raise ValueError(f"LoRA state does not match the model{hint}: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state, strict=False)  # strict=False: base weights are absent on purpose; shapes still checked


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a Parameter shared by two modules (tied embeddings) counts once."""
    params = list(model.parameters())  # parameters() already yields each shared Parameter once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
