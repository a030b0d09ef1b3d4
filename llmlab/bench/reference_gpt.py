"""A minimal GPT of the shape the usual teaching implementations have, for `vs-transformers --reference`.

One fused q/k/v projection, SDPA, the plain formulas for RMSNorm and RoPE (chunk, multiply, cat), SwiGLU as three
linears, and AdamW as a Python loop over the parameters. It holds the weights of an llmlab model (copied), so
the two compute the same function and the benchmark times the same work.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.model.transformer import apply_rope


class PlainRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RefBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.n_heads, self.rope = cfg.d_model, cfg.n_heads, cfg.positions == "rope"
        norm = (lambda: PlainRMSNorm(d, cfg.norm_eps)) if cfg.norm == "rmsnorm" else \
            (lambda: nn.LayerNorm(d, eps=cfg.norm_eps, bias=cfg.bias))
        self.ln_1, self.ln_2 = norm(), norm()
        self.c_attn = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.c_proj = nn.Linear(d, d, bias=cfg.bias)
        self.swiglu, self.gelu = cfg.mlp == "swiglu", "tanh" if cfg.gelu == "tanh" else "none"
        self.w_up = nn.Linear(d, cfg.ffn_dim, bias=cfg.bias)
        self.w_gate = nn.Linear(d, cfg.ffn_dim, bias=cfg.bias) if self.swiglu else None
        self.w_down = nn.Linear(cfg.ffn_dim, d, bias=cfg.bias)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if self.rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        h = self.ln_2(x)
        h = F.silu(self.w_gate(h)) * self.w_up(h) if self.swiglu else F.gelu(self.w_up(h), approximate=self.gelu)
        return x + self.w_down(h)


class ReferenceGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.kv_heads != cfg.n_heads:
            raise ValueError("the reference GPT has multi-head attention only")
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.positions == "learned" else None
        self.h = nn.ModuleList(RefBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = PlainRMSNorm(cfg.d_model, cfg.norm_eps) if cfg.norm == "rmsnorm" else \
            nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, cos=None, sin=None):
        T = idx.shape[1]
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x, cos[:T] if cos is not None else None, sin[:T] if sin is not None else None)
        return self.lm_head(self.ln_f(x))


def reference_of(model) -> tuple[ReferenceGPT, tuple[torch.Tensor, torch.Tensor] | None]:
    """A ReferenceGPT holding copies of an llmlab Transformer's weights, and its RoPE tables (None: learned)."""
    cfg = model.cfg
    ref = ReferenceGPT(cfg)
    ours = model.state_dict()
    mapped = {"wte.weight": ours["tok_emb.weight"], "ln_f.weight": ours["final_norm.weight"],
              "lm_head.weight": ours["lm_head.weight"]}
    if "pos_emb.weight" in ours:
        mapped["wpe.weight"] = ours["pos_emb.weight"]
    for i in range(cfg.n_layers):
        o, r = f"blocks.{i}.", f"h.{i}."
        for kind in ("weight", "bias"):
            pairs = {"attn_norm": "ln_1", "mlp_norm": "ln_2", "attn.o_proj": "c_proj", "mlp.up_proj": "w_up",
                     "mlp.gate_proj": "w_gate", "mlp.down_proj": "w_down"}
            mapped.update({f"{r}{theirs}.{kind}": ours[f"{o}{mine}.{kind}"] for mine, theirs in pairs.items()
                           if f"{o}{mine}.{kind}" in ours})
            if f"{o}attn.q_proj.{kind}" in ours:
                mapped[f"{r}c_attn.{kind}"] = torch.cat([ours[f"{o}attn.{p}_proj.{kind}"] for p in "qkv"])
    if "final_norm.bias" in ours:
        mapped["ln_f.bias"] = ours["final_norm.bias"]
    ref.load_state_dict({k: v.clone() for k, v in mapped.items()}, strict=True)
    rope = (model.rope_cos.clone(), model.rope_sin.clone()) if cfg.positions == "rope" else None
    return ref, rope


class LoopAdamW:
    """AdamW written out per parameter, as teaching code has it (decoupled weight decay, bias correction)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        self.params, self.lr, self.betas, self.eps, self.wd = list(params), lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.wd)
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
