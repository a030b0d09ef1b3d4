"""Mixture of experts: a router sends each token to top_k of E expert MLPs (plus optional always-on shared
experts), in place of a block's dense MLP.

The experts run grouped, not per token: the (token, expert) assignments are sorted by expert, each expert runs
once on its contiguous slice of tokens, and the weighted outputs are added back at their tokens. Routing is
dropless: an expert takes every token sent to it, however many.

Balancing, the price of sparse training (a router left alone sends most tokens to a few experts):
- aux_loss: the Switch/GShard loss E * sum_i f_i * P_i, f_i the share of assignments expert i receives and P_i
  its mean router probability; 1.0 when perfectly balanced. Its gradient reaches the router through P_i.
- bias: DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias is added to the scores that *select*
  experts (not to the weights that mix them) and, after each training forward, moved by bias_rate toward
  balance (up for an underloaded expert, down for an overloaded one).
- the router z-loss mean(logsumexp(logits)^2) (ST-MoE) keeps the router logits small, with either.

A training forward leaves its routing in `last` (detached, for the router monitor) and its differentiable
losses in `losses` (collected by Transformer.auxiliary_loss); eval forwards leave both alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from llmlab.config.schema import ModelConfig


@dataclass
class Routing:
    """One training forward's routing, detached: what the router monitor reduces."""

    probs: torch.Tensor  # (N, E) router softmax probabilities
    chosen: torch.Tensor  # (N, top_k) selected experts
    aux_loss: torch.Tensor  # () the load-balancing loss (computed whatever the balance method)
    z_loss: torch.Tensor  # () the router z-loss


def route(logits: torch.Tensor, top_k: int, norm_topk: bool, bias: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (probs (N, E) fp32, chosen (N, k), weights (N, k) fp32).

    Softmax over all experts, then top_k; the weights are the chosen probabilities, rescaled to sum to 1 when
    norm_topk (Mixtral, Qwen2-MoE's norm_topk_prob). A bias (DeepSeek-V3) changes only which experts are chosen."""
    probs = logits.float().softmax(dim=-1)
    scores = probs if bias is None else probs + bias
    chosen = scores.topk(top_k, dim=-1).indices  # (N, k)
    weights = probs.gather(1, chosen)
    if norm_topk:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, chosen, weights


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """E * sum_i f_i * P_i: f_i = share of the N * k assignments going to expert i, P_i = mean probability of i."""
    n_experts = probs.shape[1]
    share = chosen.flatten().bincount(minlength=n_experts).float() / chosen.numel()  # f, (E,)
    return n_experts * (share * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().logsumexp(dim=-1).square().mean()


class MoE(nn.Module):
    """A block's feed-forward layer as a mixture of experts: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, cfg: ModelConfig, mlp: type[nn.Module]):
        """mlp: the dense MLP class, each expert one of another width: mlp(cfg, hidden)."""
        super().__init__()
        moe = cfg.moe
        self.top_k, self.norm_topk, self.n_experts = moe.top_k, moe.norm_topk, moe.experts
        self.router = nn.Linear(cfg.d_model, moe.experts, bias=False)
        self.experts = nn.ModuleList(mlp(cfg, cfg.expert_dim) for _ in range(moe.experts))
        self.shared = mlp(cfg, moe.shared_experts * cfg.expert_dim) if moe.shared_experts else None
        # Qwen2-MoE's gate on the shared experts' output: sigmoid(w . x) per token
        self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False) if moe.shared_experts else None
        self.bias_rate = moe.bias_rate if moe.balance == "bias" else 0.0
        if moe.balance == "bias":  # state, not a weight: moved by the load, saved with the model
            self.register_buffer("router_bias", torch.zeros(moe.experts))
        else:
            self.router_bias = None
        self.last: Routing | None = None
        self.losses: tuple[torch.Tensor, torch.Tensor] | None = None  # (aux, z), differentiable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        logits = self.router(x)  # (N, E)
        probs, chosen, weights = route(logits, self.top_k, self.norm_topk, self.router_bias)
        flat = chosen.flatten()  # (N * k,): assignment j is token j // k
        order = flat.argsort(stable=True)  # assignments grouped by expert, tokens in order within each
        token = order // self.top_k
        counts = flat.bincount(minlength=self.n_experts).tolist()  # the one host sync: slice sizes
        grouped = x[token]  # (N * k, d)
        outputs = [expert(part) for expert, part in zip(self.experts, grouped.split(counts), strict=True) if len(part)]
        mixed = torch.cat(outputs) * weights.flatten()[order, None].to(x.dtype)
        y = torch.zeros_like(x).index_add_(0, token, mixed.to(x.dtype))
        if self.shared is not None:
            y = y + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        if self.training:
            self._keep(logits, probs, chosen, counts)
        return y.view(shape)

    def _keep(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor, counts: list[int]) -> None:
        aux, z = load_balancing_loss(probs, chosen), router_z_loss(logits)
        self.losses = (aux, z)
        self.last = Routing(probs.detach(), chosen.detach(), aux.detach(), z.detach())
        if self.router_bias is not None and self.bias_rate and torch.is_grad_enabled():
            with torch.no_grad():
                load = torch.tensor(counts, dtype=torch.float32, device=probs.device)
                if dist.is_available() and dist.is_initialized():  # one bias for every rank: the global load
                    dist.all_reduce(load)
                self.router_bias += self.bias_rate * torch.sign(load.mean() - load)
