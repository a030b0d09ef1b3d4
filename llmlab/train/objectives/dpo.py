"""Direct preference optimisation: the policy learns to prefer the chosen reply over the rejected one more than
a frozen reference model does.

    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))])

log pi(y) is the summed log-probability of the reply's tokens (the loss mask) given the prompt. At the start
the policy is the reference, every term is zero and the loss is exactly ln 2.

DPO can raise the margin by lowering both replies, the chosen one less: the right answer then loses probability
and greedy accuracy falls. `nll_weight` adds the chosen reply's next-token loss (per token), as iterative RPO
does (Pang et al. 2024, "Iterative Reasoning Preference Optimization"), which keeps the chosen reply likely.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.data.batch import IGNORE, Batch
from llmlab.train.objectives.base import Objective, with_auxiliary


def sequence_logps(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(rows,) summed log-probabilities of each row's unmasked targets."""
    logits = model(batch.input_ids).float()
    targets = batch.targets
    mask = targets != IGNORE
    picked = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


class DPOObjective(Objective):
    """Batches hold the chosen rows, then the rejected rows (llmlab.data.chat_batches.collate of pairs)."""

    def __init__(self, reference: nn.Module, beta: float, nll_weight: float = 0.0):
        self.reference, self.beta, self.nll_weight = reference.eval(), beta, nll_weight
        for p in self.reference.parameters():
            p.requires_grad_(False)

    def targets_in(self, batch: Batch) -> int:
        return batch.input_ids.shape[0] // 2  # the loss is a mean over pairs

    def loss(self, model: nn.Module, batch: Batch, record: dict | None = None) -> torch.Tensor:
        chosen, rejected = sequence_logps(model, batch).chunk(2)
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logps(self.reference, batch).chunk(2)
        chosen_reward = self.beta * (chosen - ref_chosen)
        rejected_reward = self.beta * (rejected - ref_rejected)
        margin = chosen_reward - rejected_reward
        loss = -F.logsigmoid(margin).mean()
        if self.nll_weight:
            chosen_tokens = (batch.targets != IGNORE).sum(-1).chunk(2)[0].clamp(min=1)
            nll = -(chosen / chosen_tokens).mean()
            loss = loss + self.nll_weight * nll
            if record is not None:
                record.setdefault("dpo/chosen_nll", []).append(nll.detach())
        if record is not None:
            for name, value in (("dpo/loss", loss), ("dpo/reward_margin", margin.mean()),
                                ("dpo/reward_accuracy", (margin > 0).float().mean()),
                                ("dpo/chosen_logp", chosen.mean()), ("dpo/rejected_logp", rejected.mean())):
                record.setdefault(name, []).append(value.detach())
        return with_auxiliary(model, loss, record)
