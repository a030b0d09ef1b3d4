"""Fused pieces of the Llama path, each one autograd node with a hand-written backward.

Autograd through the plain formulas records every elementwise op and keeps its inputs: RMSNorm's backward alone
was ten multiplies on this CPU, and RoPE's chunk, four multiplies and cat ran on q and on k in every layer. Here
each is one node that saves the least it needs (RMSNorm: its input and 1/rms; RoPE: nothing but the tables) and
runs a few in-place ops in backward. tests/test_fused.py holds them to the plain formulas (values and gradients
within 1e-6 in fp32). torch.compile traces through them like any autograd.Function.
"""

from __future__ import annotations

import torch


def _fused_rms_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / rms(x) * weight, 1 / rms(x)) from PyTorch's fused kernel where this version has one."""
    fused = getattr(torch.ops.aten, "_fused_rms_norm", None)
    if fused is not None and x.dtype == weight.dtype:
        y, rstd = fused(x, [x.shape[-1]], weight, eps)
        return y, rstd
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True).add_(eps))
    return (x.float() * rstd).to(x.dtype) * weight, rstd


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = _fused_rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        rstd = rstd.to(x.dtype)
        x_hat = x * rstd  # (..., d)
        grad_x_hat = grad * weight
        # d/dx of x * rstd: rstd * (g - x_hat * mean(g * x_hat)), g the gradient at x_hat
        mean = (grad_x_hat * x_hat).mean(-1, keepdim=True)
        grad_x = torch.addcmul(grad_x_hat, x_hat, mean, value=-1).mul_(rstd) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * x_hat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    return RMSNormFunction.apply(x, weight, eps)


class FusedRMSNorm(torch.nn.RMSNorm):
    """nn.RMSNorm (same parameter, same state dict) whose training backward is rms_norm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return rms_norm(x, self.weight, eps)


class RoPEFunction(torch.autograd.Function):
    """Rotate each head's feature pairs (first half, second half) by position; the backward is the inverse
    rotation of the gradient, so nothing of x is kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, sign=1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, sign=-1.0), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """(x1 cos - s x2 sin, x2 cos + s x1 sin) written into one output: four ops, no chunk copies, no cat."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if torch.compiler.is_compiling():  # the compiler fuses the plain form itself (and refuses out= on views)
        return torch.cat((x1 * cos - sign * x2 * sin, x2 * cos + sign * x1 * sin), dim=-1)
    out = torch.empty(torch.broadcast_shapes(x.shape, (*cos.shape[:-1], x.shape[-1])), dtype=x.dtype,
                      device=x.device)
    out1, out2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=out1)
    out1.addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=out2)
    out2.addcmul_(x1, sin, value=sign)
    return out


def rotate_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., head_dim) rotated; cos and sin (..., head_dim // 2) broadcast against x's leading dimensions."""
    return RoPEFunction.apply(x, cos.to(x.dtype), sin.to(x.dtype))
