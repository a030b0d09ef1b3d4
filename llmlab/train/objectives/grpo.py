"""GRPO's loss on one batch of rollouts: the clipped surrogate and the KL to the frozen reference, nothing else.

    -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3,   ratio = pi(t) / pi_old(t)
    k3 = exp(ref(t) - pi(t)) - (ref(t) - pi(t)) - 1                        (log-probabilities; >= 0, unbiased KL)

averaged over every sampled completion token (token-level, as DAPO: long and short completions weigh the same per
token). Sampling, rewards and advantages happen before, in the rollout source (llmlab.train.rollouts), which hands
over a RolloutBatch; pi_old is the policy that sampled it (None when each sample trains one update: pi_old is then the
policy itself, detached). eps_high > eps_low is DAPO's asymmetric clip ("clip-higher").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from llmlab.train.objectives.base import Objective


class RolloutBatch(NamedTuple):
    """One micro-batch of sampled completions with what the loss needs of them."""

    ids: torch.Tensor  # (N, P + C) left-padded prompts, then completions (after <|end|>: <|end|> again)
    mask: torch.Tensor  # (N, P + C) 1 on real tokens
    completion_mask: torch.Tensor  # (N, C) the completion's tokens up to and including its <|end|>
    advantages: torch.Tensor  # (N,)
    ref_logp: torch.Tensor  # (N, C) the frozen reference's log-probabilities of the completion tokens
    old_logp: torch.Tensor | None  # (N, C) the sampling policy's; None: only one update on these samples
    metrics: dict[str, torch.Tensor]  # what sampling measured (rewards, spread, lengths)
    fresh: bool  # the first update on these samples: their metrics are logged with it

    def to(self, device: torch.device) -> RolloutBatch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self._asdict().items()}
        return RolloutBatch(**moved)


class GRPOObjective(Objective):
    """The policy-gradient loss of a RolloutBatch (see the module's docstring)."""

    def __init__(self, beta: float, clip_eps: float, clip_eps_high: float | None = None):
        self.beta, self.clip_low = beta, clip_eps
        self.clip_high = clip_eps if clip_eps_high is None else clip_eps_high

    def tokens_in(self, batch: RolloutBatch) -> int:
        return batch.ids.numel()

    def targets_in(self, batch: RolloutBatch) -> int:
        return int(batch.completion_mask.sum())

    def loss(self, model: nn.Module, batch: RolloutBatch, record: dict | None = None) -> torch.Tensor:
        width = batch.ids.shape[1] - batch.completion_mask.shape[1]
        logp, entropy = completion_logps(model, batch.ids, batch.mask, width)
        old = logp.detach() if batch.old_logp is None else batch.old_logp
        ratio = torch.exp(logp - old)
        adv = batch.advantages[:, None]
        clipped = ratio.clamp(1 - self.clip_low, 1 + self.clip_high)
        surrogate = torch.minimum(ratio * adv, clipped * adv)
        log_ref_ratio = batch.ref_logp - logp
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3: unbiased, >= 0, zero where pi = ref
        per_token = -surrogate + self.beta * kl
        m = batch.completion_mask.float()
        n = m.sum().clamp(min=1)
        loss = (per_token * m).sum() / n
        if record is not None:
            clip_active = ((ratio < 1 - self.clip_low) & (adv < 0)) | ((ratio > 1 + self.clip_high) & (adv > 0))
            values = {"grpo/kl": (kl.detach() * m).sum() / n, "grpo/entropy": (entropy * m).sum() / n,
                      "grpo/clip_fraction": (clip_active.float() * m).sum() / n}
            if batch.fresh:  # what sampling measured, once per sample
                values |= batch.metrics
            for name, value in values.items():
                record.setdefault(name, []).append(value.detach().float())
        return loss


def completion_logps(model: nn.Module, seq: torch.Tensor, mask: torch.Tensor,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (N, C) of the tokens after the first `width` (the prompts), and the entropy of the
    distributions they were drawn from (N, C, detached)."""
    logits = model(seq[:, :-1], attention_mask=mask[:, :-1])[:, width - 1:].float()  # (N, C, vocab)
    logp_all = logits.log_softmax(-1)
    logp = torch.gather(logp_all, 2, seq[:, width:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.detach().exp() * logp_all.detach()).sum(-1)
    return logp, entropy
