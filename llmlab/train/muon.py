"""Muon with a cheaper Newton-Schulz on CPUs: the arithmetic's dtype chosen, same-shape matrices in one batch.

torch.optim.Muon orthogonalises every update in bfloat16, one matrix at a time. That is what a GPU's tensor cores
are fast at; a CPU without bfloat16 matrix units emulates it, so there the float32 iteration is several times
faster (and more exact). Matrices of one shape (after turning tall ones on their side, as the iteration does)
can run as one batched matmul, which saves the per-call overhead that dominates at a small model's sizes.

With ns_dtype=bfloat16 and batching off this is torch.optim.Muon itself (its own step runs), bit for bit; the
state dict is torch's in every setting, so a checkpoint moves between them.
"""

from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr

NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def ns_dtype_for(setting: str, device: torch.device) -> torch.dtype:
    """trainer.muon.ns_dtype as a dtype: auto = bfloat16 on CUDA (tensor cores), float32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return NS_DTYPES[setting]


def orthogonalise(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon on a batch of wide matrices (B, rows <= cols)."""
    a, b, c = coefficients
    x = updates.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (B, rows, rows)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a * x + (b * gram + c * gram^2) @ x
    return x


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose Newton-Schulz runs in `ns_dtype`, batching same-shape matrices when `batched`."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, batched: bool = False, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype, self.batched = ns_dtype, batched

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16 and not self.batched:
            return super().step(closure)  # torch's own arithmetic, bit for bit
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        by_shape: dict[tuple[int, int], list[tuple[torch.nn.Parameter, torch.Tensor, bool]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            tall = update.size(0) > update.size(1)
            update = update.mT if tall else update  # the iteration works on the wide side
            key = tuple(update.shape) if self.batched else (id(p), 0)
            by_shape.setdefault(key, []).append((p, update, tall))
        for items in by_shape.values():
            stacked = torch.stack([u for _, u, _ in items])
            ortho = orthogonalise(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
            for (p, _, tall), o in zip(items, ortho, strict=True):
                o = o.mT if tall else o
                p.mul_(1 - lr * decay)
                p.add_(o.to(p.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
