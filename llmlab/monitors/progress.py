"""ProgressMonitor: the progress measures of grokking (Nanda et al. 2023), computed while a modular-arithmetic model
trains, which move steadily before the held-out accuracy jumps.

On a capture step, with the model in eval mode and without gradients:
- weight_norm: the L2 norm of all parameters together, sqrt(sum of every squared weight), each tensor once.
  Weight decay shrinks it; a memorising solution needs large weights, the generalising one fewer.
- fourier_share: how sparse the input embedding of the p number tokens is in the Fourier basis of Z_p. With E the
  (p, d) embedding rows of the numbers 0..p-1 and F the orthonormal real Fourier basis of Z_p (the constant
  1/sqrt(p), then for each frequency k = 1..(p-1)/2 the pair sqrt(2/p) cos(2 pi k x / p), sqrt(2/p) sin(2 pi k x / p)),
  the energy of frequency k is ||F_cos_k E||^2 + ||F_sin_k E||^2 and fourier_share is the summed energy of the
  `frequencies` largest frequencies over ||E||^2 (the constant component counts in the total, never as a
  frequency). 1.0: the embedding is made of those frequencies alone; a random embedding spreads evenly, about
  frequencies x 2 / p. `top_frequencies` names them, largest first.
- restricted_loss and excluded_loss (op add or sub only): let L[a, b, c] be the model's logits for answer c (the p
  number outputs only) at the '=' position, over every pair (a, b); s = a + b (sub: a - b) mod p. For a set K of key
  frequencies, P_K L is the projection of each L[., ., c], as a function on the p x p grid, onto the directions
  cos(2 pi k s / p) and sin(2 pi k s / p), k in K (orthogonal to each other and to the constant).
  restricted_loss = cross-entropy on the training pairs of mean_ab(L) + P_K L (only the key frequencies' part of
  the answer's algorithm kept); excluded_loss = cross-entropy on the training pairs of L - P_K L (that part removed).
  The restricted loss falls as the generalising circuit forms; the excluded loss rises, because the training pairs
  come to be fitted through those frequencies instead of by memorising. K is the embedding's `frequencies` largest
  frequencies at that capture: Nanda et al. take K from the final model, which a monitor running during training
  cannot know. For mul and div the algorithm lives in the Fourier basis of the multiplicative group (the discrete
  logarithm of a and b), which this monitor does not compute: those two measures are left out.

Without a modular task (any other data) only weight_norm is measured. TensorBoard scalars `progress/...`, one
history line per capture in monitors/progress/history.jsonl (with every frequency's energy share), written by the
background worker.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.config.monitors import ProgressMonitorConfig
from llmlab.data.modular import ModularTask, all_pairs
from llmlab.monitors.base import Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history

ADDITIVE = {"add": 1, "sub": -1}  # s = a + sign x b: the ops whose algorithm lives in the Fourier basis of Z_p


def fourier_basis(p: int) -> torch.Tensor:
    """(p, p) orthonormal rows: the constant, then cos and sin of each frequency 1..(p-1)//2 (and cos pi x when p
    is even, i.e. p = 2)."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        angle = 2 * math.pi * k * x / p
        rows += [math.sqrt(2 / p) * torch.cos(angle), math.sqrt(2 / p) * torch.sin(angle)]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
    return torch.stack(rows)


def frequency_energy(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, d) rows of the numbers -> (energy share of each frequency 1..p//2, share of the constant component);
    shares of ||embedding||^2, so the two together sum to 1."""
    p = embedding.shape[0]
    coefficients = fourier_basis(p).to(embedding.device) @ embedding.double()  # (p, d)
    power = coefficients.pow(2).sum(-1)  # (p,) per basis row
    total = power.sum().clamp_min(1e-300)
    pairs = power[1:1 + 2 * ((p - 1) // 2)].view(-1, 2).sum(-1)  # cos and sin of each frequency
    if p % 2 == 0:
        pairs = torch.cat([pairs, power[-1:]])
    return pairs / total, power[0] / total


def fourier_share(embedding: torch.Tensor, k: int) -> tuple[float, list[int]]:
    """The energy share of the embedding's k largest frequencies, and those frequencies (1-based), largest first."""
    shares, _ = frequency_energy(embedding)
    top = torch.topk(shares, min(k, len(shares)))
    return float(top.values.sum()), [int(i) + 1 for i in top.indices]


def weight_norm(model: nn.Module) -> torch.Tensor:
    """sqrt(sum of every squared parameter), a tied tensor once."""
    return torch.sqrt(sum(p.detach().float().pow(2).sum() for p in model.parameters()))


def key_frequency_part(logits: torch.Tensor, s: torch.Tensor, p: int, frequencies: list[int]) -> torch.Tensor:
    """P_K L: logits (N, p) over every pair of the grid, s (N,) = a +- b mod p -> (N, p), the projection of each
    answer's logits onto cos(2 pi k s / p) and sin(2 pi k s / p) for k in frequencies (each has squared norm
    p^2 / 2 on the grid, p odd)."""
    k = torch.tensor(frequencies, dtype=torch.float64, device=logits.device)
    angle = 2 * math.pi * k[None, :] * s.double()[:, None] / p  # (N, K)
    directions = torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)  # (N, 2K)
    coefficients = directions.T @ logits.double() / (len(s) / 2)  # (2K, p)
    return (directions @ coefficients).to(logits.dtype)


@torch.no_grad()
def restricted_excluded(model: nn.Module, task: ModularTask, frequencies: list[int]) -> tuple[float, float]:
    """(restricted_loss, excluded_loss) on the training pairs, as the module docstring defines them."""
    device = next(model.parameters()).device
    p, sign = task.p, ADDITIVE[task.op]
    grid = all_pairs(p, task.op)
    logits = model(task.inputs(grid).to(device))[:, -1, :p].float()  # (p * p, p): answers only
    s = ((grid[:, 0] + sign * grid[:, 1]) % p).to(device)
    key = key_frequency_part(logits, s, p, frequencies)
    restricted = logits.mean(0, keepdim=True) + key
    excluded = logits - key
    train = task.train_pairs[:, 0] * p + task.train_pairs[:, 1]  # row-major grid index of each training pair
    answers = task.answers(task.train_pairs).to(device)
    train = train.to(device)
    losses = torch.stack([F.cross_entropy(restricted[train], answers), F.cross_entropy(excluded[train], answers)])
    restricted_loss, excluded_loss = losses.tolist()
    return restricted_loss, excluded_loss


class ProgressMonitor(Monitor):
    """In llmlab's trainer: built from monitors.progress, with the run's modular task (data=modular)."""

    name = "progress"

    def __init__(self, cfg: ProgressMonitorConfig, task: ModularTask | None = None):
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)))
        self.cfg, self.task = cfg, task

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        self.dir = self.output_dir(ctx)
        truncate_history(self.dir / "history.jsonl", ctx.resume_step)
        self.embedding = getattr(ctx.model, "tok_emb", None)
        if self.task is not None and self.embedding is None:
            raise ValueError(f"ProgressMonitor: {type(ctx.model).__name__} has no tok_emb to take the Fourier "
                             "measures of")

    def measure(self) -> dict:
        model, task = self.ctx.model, self.task
        measured: dict = {"weight_norm": float(weight_norm(model))}
        if task is None:
            return measured
        was_training = model.training
        model.eval()
        try:
            shares, constant = frequency_energy(self.embedding.weight.detach()[: task.p])
            shares = shares.cpu()
            top = torch.topk(shares, min(self.cfg.frequencies, len(shares)))
            frequencies = [int(i) + 1 for i in top.indices]
            measured.update(p=task.p, fourier_share=float(top.values.sum()), top_frequencies=frequencies,
                            constant_share=float(constant), frequency_shares=[round(float(v), 6) for v in shares])
            if task.op in ADDITIVE and task.p > 2:
                measured["restricted_loss"], measured["excluded_loss"] = restricted_excluded(model, task,
                                                                                             frequencies)
        finally:
            model.train(was_training)
        return measured

    def on_step_end(self, info: StepInfo) -> None:
        if not self.schedule.due(info.step):
            return
        measured = self.measure()
        record = {**info.as_dict, "timestamp": time.time(), **measured}
        sinks = self.ctx.sinks
        if sinks is not None:
            sinks.log_scalars(info.step, {f"progress/{key}": float(measured[key]) for key in (
                "weight_norm", "fourier_share", "restricted_loss", "excluded_loss") if key in measured})
            if "top_frequencies" in measured:
                sinks.log_text(info.step, "progress/top_frequencies", ", ".join(map(str, measured["top_frequencies"])))
        self.submit(lambda: append_history(self.dir / "history.jsonl", record))
