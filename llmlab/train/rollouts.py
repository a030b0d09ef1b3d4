"""GRPO's training data: a checkpointable source of rollout batches (prompt order, the sampling generator, the
samples still being trained on, reward scoring), so the objective only computes a loss.

For each prompt of a micro-batch the policy samples a group of `group_size` completions (one padded batch, KV
cache); each is scored by the reward functions, and a completion's advantage is its reward against its group's:
(r - mean) / (std + eps). A group whose rewards all agree teaches nothing and is counted (grpo/zero_spread_groups);
with dynamic sampling (DAPO) such groups are dropped and groups of further prompts drawn in their place.

Each step's grad_accum_steps micro-batches are sampled together, then trained on `updates_per_batch` steps in a
row; from the second update on the loss needs the sampling policy's log-probabilities, kept with the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.config.errors import ConfigError
from llmlab.data.chat_template import ChatTemplate
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.train.objectives.grpo import RolloutBatch, completion_logps
from llmlab.train.rewards import PromptRecord, Rewards

ADVANTAGE_EPS = 1e-4  # keeps a group of nearly equal rewards from dividing by ~0


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int
    temperature: float
    max_new_tokens: int
    updates_per_batch: int
    dynamic_sampling: bool = False  # drop zero-spread groups, draw further prompts in their place
    max_draws: int = 4  # dynamic sampling: prompt batches drawn at most per micro-batch


def group_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (B * G,), each prompt's G in a row -> advantages (B * G,) and which groups had zero spread (B,)."""
    groups = rewards.view(-1, group_size)  # (B, G)
    std = groups.std(dim=1, keepdim=True)  # unbiased, as the GRPO paper's implementations
    advantages = (groups - groups.mean(dim=1, keepdim=True)) / (std + ADVANTAGE_EPS)
    flat = std.squeeze(1) == 0
    return advantages.masked_fill(flat[:, None], 0.0).flatten(), flat


class PromptOrder:
    """Endless shuffled prompt indices, a fresh permutation each epoch; under data parallelism each rank takes its
    slice of each global batch."""

    def __init__(self, n_records: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n_records < batch_size * world_size:
            raise ConfigError(f"trainer.batch_size={batch_size} x {world_size} processes is more than the "
                              f"{n_records} training prompts")
        self.n, self.per_rank, self.seed, self.rank = n_records, batch_size, seed, rank
        self.global_size = batch_size * world_size
        self.epoch, self.index = 0, 0

    def next(self) -> list[int]:
        if (self.index + 1) * self.global_size > self.n:
            self.epoch, self.index = self.epoch + 1, 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()[self.index * self.global_size:
                                                                (self.index + 1) * self.global_size]
        self.index += 1
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_size


class RolloutSource:
    """Endless RolloutBatches sampled from `policy` (the model being trained, unwrapped); `reference` is the
    frozen start the KL is measured to."""

    def __init__(self, policy: nn.Module, reference: nn.Module, records: list[PromptRecord], template: ChatTemplate,
                 rewards: Rewards, cfg: RolloutConfig, order: PromptOrder, accum: int, seed: int,
                 device: torch.device):
        self.policy, self.reference, self.records = policy, reference.eval(), records
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.template, self.rewards, self.cfg, self.order, self.accum = template, rewards, cfg, order, accum
        self.device = device
        self.generator = torch.Generator(device).manual_seed(seed)  # sampling only: dropout keeps the global one
        self.sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       stop_id=template.end_id)
        self.pending: list[RolloutBatch] = []  # this step's micro-batches, trained on updates_per_batch times
        self.served = 0

    # ---- the batch source --------------------------------------------------------------------------------------
    def next(self) -> RolloutBatch:
        if self.served == len(self.pending) * self.cfg.updates_per_batch:
            self.pending, self.served = [self.sample() for _ in range(self.accum)], 0
        batch = self.pending[self.served % self.accum]
        fresh = self.served < self.accum
        self.served += 1
        return batch._replace(fresh=fresh)

    def state_dict(self) -> dict:
        return {"epoch": self.order.epoch, "index": self.order.index, "records": len(self.records),
                "generator": self.generator.get_state(), "served": self.served,
                "pending": [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in b._asdict().items()}
                            for b in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("records", len(self.records)) != len(self.records):
            raise ConfigError(f"the checkpoint trained on {state['records']} prompts and this config gives "
                              f"{len(self.records)}: the GRPO data changed since (resume with the same data, or "
                              "start a new run from the checkpoint with stage.init_from)")
        self.order.epoch, self.order.index, self.served = state["epoch"], state["index"], state["served"]
        self.generator.set_state(state["generator"])
        self.pending = [RolloutBatch(**b).to(self.device) for b in state["pending"]]

    # ---- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self) -> RolloutBatch:
        """One micro-batch of groups. With dynamic sampling, zero-spread groups are dropped and further prompts
        drawn until the micro-batch is full or max_draws batches were drawn (the rest stays zero-spread)."""
        g = self.cfg.group_size
        kept: list[tuple] = []  # per group: (prompt ids, completion ids, rewards, terms, ended, family)
        drawn = zero = 0
        while len(kept) < self.order.per_rank:
            index = self.order.next()
            groups = self.sample_groups(index)
            drawn += len(groups)
            zero += sum(flat for *_, flat in groups)
            last_draw = not self.cfg.dynamic_sampling or drawn >= self.cfg.max_draws * self.order.per_rank
            if last_draw:  # fill up with what is left, zero-spread or not
                kept += [grp[:-1] for grp in groups][:self.order.per_rank - len(kept)]
            else:
                kept += [grp[:-1] for grp in groups if not grp[-1]][:self.order.per_rank - len(kept)]
        index = [i for i, *_ in kept]
        longest = max(c.shape[1] for _, c, *_ in kept)  # groups of separate draws may stop at other lengths
        completions = torch.cat([F.pad(c, (0, longest - c.shape[1]), value=self.template.end_id)
                                 for _, c, *_ in kept])  # (B * G, C): each prompt's group in a row
        rewards = torch.cat([r for _, _, r, *_ in kept])
        terms = {name: torch.cat([t[name] for *_, t, _ in kept]) for name in self.rewards.names}
        ended = torch.cat([e for *_, e in kept])
        advantages, flat = group_advantages(rewards, g)
        prompt_ids, prompt_mask = pad_prompts([self.records[i].ids for i in index], self.template.end_id,
                                              self.device)
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(g, 0), prompt_mask.repeat_interleave(g, 0)
        seq = torch.cat((prompt_ids, completions), 1)
        mask = torch.cat((prompt_mask, torch.ones_like(completions)), 1)
        end = completions == self.template.end_id
        completion_mask = (end.cumsum(1) - end.long()) == 0  # up to and including the first <|end|>
        width = prompt_ids.shape[1]
        ref_logp, _ = completion_logps(self.reference, seq, mask, width)
        old_logp = None
        if self.cfg.updates_per_batch > 1:  # later updates compare against the policy that sampled
            was_training = self.policy.training
            self.policy.eval()
            old_logp, _ = completion_logps(self.policy, seq, mask, width)
            self.policy.train(was_training)
        metrics = self.measure(index, rewards, terms, flat, completion_mask, ended, zero / drawn)
        metrics["grpo/groups_drawn"] = torch.tensor(float(drawn))  # dynamic sampling: more than the batch's
        return RolloutBatch(seq, mask, completion_mask, advantages.to(self.device), ref_logp, old_logp, metrics,
                            True)

    def sample_groups(self, index: list[int]) -> list[tuple]:
        """Sample and score group_size completions of each prompt (one padded batch): per prompt (record index,
        completions (G, C), rewards (G,), terms, ended (G,), zero spread)."""
        g = self.cfg.group_size
        prompts, prompt_mask = pad_prompts([self.records[i].ids for i in index], self.template.end_id, self.device)
        seq = generate(self.policy, prompts.repeat_interleave(g, 0), self.sampling, self.generator,
                       attention_mask=prompt_mask.repeat_interleave(g, 0))
        completions = seq[:, prompts.shape[1]:]  # (B * G, C)
        ended = (completions == self.template.end_id).any(1)
        texts = [self.template.decode(row) for row in completions.tolist()]
        records = [self.records[i] for i in index for _ in range(g)]
        rewards, terms = self.rewards(records, texts, ended.tolist())
        _, flat = group_advantages(rewards, g)
        return [(i, completions[k * g:(k + 1) * g], rewards[k * g:(k + 1) * g],
                 {n: t[k * g:(k + 1) * g] for n, t in terms.items()}, ended[k * g:(k + 1) * g].cpu(),
                 bool(flat[k])) for k, i in enumerate(index)]

    def measure(self, index: list[int], rewards: torch.Tensor, terms: dict[str, torch.Tensor], flat: torch.Tensor,
                completion_mask: torch.Tensor, ended: torch.Tensor, drawn_zero_share: float) -> dict[str, torch.Tensor]:
        g = self.cfg.group_size
        values = {"grpo/reward_mean": rewards.mean(), "grpo/reward_std": rewards.std(),
                  "grpo/completion_length": completion_mask.sum(1).float().mean().cpu(),
                  "grpo/ended_fraction": ended.float().mean(), "grpo/zero_spread_groups": flat.float().sum(),
                  "grpo/zero_spread_share": torch.tensor(drawn_zero_share)}
        values |= {f"grpo/reward/{name}": t.mean() for name, t in terms.items()}
        families: dict[str, list[torch.Tensor]] = {}
        for k, i in enumerate(index):
            if "family" in self.records[i].fields:
                families.setdefault(self.records[i].fields["family"], []).append(rewards[k * g:(k + 1) * g])
        values |= {f"grpo/family/{f}": torch.cat(v).mean() for f, v in sorted(families.items())}
        return {k: v.detach().float() for k, v in values.items()}
