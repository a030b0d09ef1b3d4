"""GRPO: reinforcement learning from verifiable rewards, the policy its own baseline (group-relative policy
optimisation, as in DeepSeekMath; token-level averaging as in DAPO).

For each prompt of a batch the policy samples a group of `group_size` completions (one padded batch, KV cache),
each is scored, and a completion's advantage is its reward against its group's: (r - mean) / (std + eps). A group
whose rewards are all equal teaches nothing and is counted (grpo/zero_spread_groups). The loss over every sampled
completion token of the batch, averaged over those tokens:

    -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + beta * k3,   ratio = pi(t) / pi_old(t)
    k3 = exp(ref(t) - pi(t)) - (ref(t) - pi(t)) - 1                        (log-probabilities; >= 0, unbiased KL)

pi_old is the policy that sampled: each batch of samples trains `updates_per_batch` optimizer steps, so from the
second on the ratio moves and the clip bounds how far. ref is the frozen starting model.

Rewards: the embedded tasks' verifier (1 for an exact match), `format_reward` for a completion that ends with
<|end|>, and the user's function `stage.reward._target_`, called as f(prompt, completion, record) -> float with
the user's last message, the decoded completion and the record's fields (a task's family, prompt, answer, wrong;
a data=chat record as read from its file).

The trainer is the one loop of every stage: the objective samples, and owns what a resumed run needs to sample
the same (its generator and the samples still being trained on), checkpointed through state_dict().
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TasksDataConfig
from llmlab.config.stages import GRPOConfig
from llmlab.data.batch import IGNORE, Batch
from llmlab.data.chat import Message, expand, parse_conversation, read_records
from llmlab.data.chat_batches import fixed_batches
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.fingerprint import fingerprint, source_record
from llmlab.data.post_training import prepare_chat_items, tasks_of
from llmlab.data.tasks import Task, is_correct
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.stages.base import Stage, StageContext, StageParts
from llmlab.stages.chat import add_adapters, chat_policy, starting_model, task_sampler
from llmlab.train import distributed
from llmlab.train.evaluators import task_evaluators
from llmlab.train.objectives import Objective

ADVANTAGE_EPS = 1e-4  # keeps a group of nearly equal rewards from dividing by ~0


# ---- prompts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRecord:
    ids: list[int]  # the chat template's prompt, ending with <|assistant|>
    prompt: str  # the user's last message
    fields: dict  # what the reward functions read: a task's fields or the file's record
    where: str  # for a reward that raises: which record it was


class PromptBatch(NamedTuple):
    """Left-padded prompts (B, T) with their attention mask and record indices; `slot`: which micro-batch of the
    step it is, `fresh`: whether to sample (False: train again on that slot's samples)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: list[int]
    slot: int
    fresh: bool

    def to(self, device: torch.device) -> PromptBatch:
        return self._replace(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device))


class PromptBatches:
    """Endless shuffled prompt batches: each step's grad_accum_steps batches are served updates_per_batch steps
    in a row. Under data parallelism each rank takes its slice of each global batch."""

    def __init__(self, records: list[PromptRecord], batch_size: int, pad_id: int, seed: int, accum: int,
                 repeats: int, rank: int = 0, world_size: int = 1):
        if len(records) < batch_size * world_size:
            raise ConfigError(f"trainer.batch_size={batch_size} x {world_size} processes is more than the "
                              f"{len(records)} training prompts")
        self.records, self.per_rank, self.pad_id, self.seed = records, batch_size, pad_id, seed
        self.global_size, self.rank, self.accum, self.repeats = batch_size * world_size, rank, accum, repeats
        self.epoch, self.index, self.block, self.served = 0, 0, [], 0

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.records), generator=gen).tolist()

    def _fresh(self) -> list[int]:
        if (self.index + 1) * self.global_size > len(self.records):
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order(self.epoch)[self.index * self.global_size:(self.index + 1) * self.global_size]
        self.index += 1
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def next(self) -> PromptBatch:
        if self.served == len(self.block) * self.repeats:
            self.block, self.served = [self._fresh() for _ in range(self.accum)], 0
        slot = self.served % self.accum
        fresh, index = self.served < self.accum, self.block[slot]
        self.served += 1
        ids, mask = pad_prompts([self.records[i].ids for i in index], self.pad_id)
        return PromptBatch(ids, mask, index, slot, fresh)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.records) // self.global_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "block": self.block, "served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.block, self.served = (state[k] for k in ("epoch", "index", "block", "served"))


def task_prompts(data: TasksDataConfig, template: ChatTemplate, limit: int) -> list[PromptRecord]:
    tasks = tasks_of(data, "train", data.train_tasks)
    return [PromptRecord(template.prompt([Message("user", t.prompt)])[-limit:], t.prompt, dataclasses.asdict(t),
                         f"train task {i} ({t.family})") for i, t in enumerate(tasks)]


def file_prompts(paths: list[str], template: ChatTemplate, limit: int, val_fraction: float) -> list[PromptRecord]:
    """The training part of data=chat records (the same split as its validation): each conversation up to its
    last assistant reply is a prompt; the whole record goes to the reward."""
    records = [(record, where) for path in expand(paths) for record, where in read_records(path)]
    records = records[:-max(1, round(len(records) * val_fraction))]
    prompts = []
    for record, where in records:
        messages = parse_conversation(record, where)[:-1]  # the reply is the user's reward's business
        prompts.append(PromptRecord(template.prompt(messages)[-limit:], messages[-1].content, record, where))
    return prompts


# ---- rewards ------------------------------------------------------------------------------------------------


class RewardError(ConfigError):
    """A reward function raised: the run stops with one line naming the record."""


def user_reward(target: str | None) -> Callable[..., float] | None:
    if not target:
        return None
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"stage.reward._target_={target}: cannot import it ({type(e).__name__}: {e})") from None


class Rewards:
    """The reward of a completion: verifier + format + the user's function, each reported by name."""

    def __init__(self, format_reward: float, verify: bool, user: Callable[..., float] | None, target: str | None):
        self.format_reward, self.verify, self.user, self.target = format_reward, verify, user, target

    def __call__(self, record: PromptRecord, completion: str, ended: bool) -> float:
        reward = self.format_reward * ended
        if self.verify:
            reward += float(is_correct(Task(**record.fields), completion))
        if self.user is not None:
            try:
                reward += float(self.user(record.prompt, completion, record.fields))
            except Exception as e:  # noqa: BLE001 (whatever the user's code raises stops the run here, in one line)
                raise RewardError(f"stage.reward._target_={self.target} raised {type(e).__name__}: {e} on "
                                  f"{record.where} (completion {completion!r}, record {record.fields!r})") from None
        return reward


def group_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (B * G,), each prompt's G in a row -> advantages (B * G,) and which groups had zero spread (B,)."""
    groups = rewards.view(-1, group_size)  # (B, G)
    std = groups.std(dim=1, keepdim=True)  # unbiased, as the GRPO paper's implementations
    advantages = (groups - groups.mean(dim=1, keepdim=True)) / (std + ADVANTAGE_EPS)
    flat = std.squeeze(1) == 0
    return advantages.masked_fill(flat[:, None], 0.0).flatten(), flat


# ---- the objective ------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """One micro-batch's samples: prompt + completion ids and what the loss needs of them."""

    ids: torch.Tensor  # (N, P + C) left-padded prompts, then completions (after <|end|>: <|end|> again)
    mask: torch.Tensor  # (N, P + C) 1 on real tokens
    completion_mask: torch.Tensor  # (N, C) the completion's tokens up to and including its <|end|>
    advantages: torch.Tensor  # (N,)
    ref_logp: torch.Tensor  # (N, C) the frozen reference's log-probabilities of the completion tokens
    old_logp: torch.Tensor | None = None  # (N, C) the sampling policy's, kept for the next updates of the batch


class GRPOObjective(Objective):
    def __init__(self, reference: nn.Module, records: list[PromptRecord], template: ChatTemplate,
                 rewards: Rewards, cfg: GRPOConfig, seed: int, device: torch.device):
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.records, self.template, self.rewards, self.cfg = records, template, rewards, cfg
        self.generator = torch.Generator(device).manual_seed(seed)  # sampling only: dropout keeps the global one
        self.sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       stop_id=template.end_id)
        self.slots: dict[int, Rollouts] = {}  # samples still to be trained on, per micro-batch slot
        self.last_tokens = 0

    # what a resumed run needs to sample and train exactly as this one would have
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "slots": {k: dataclasses.asdict(v) for k, v in self.slots.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        device = self.generator.device
        self.slots = {k: Rollouts(**{n: None if t is None else t.to(device) for n, t in v.items()})
                      for k, v in state["slots"].items()}

    def tokens_in(self, batch) -> int:
        return self.last_tokens if isinstance(batch, PromptBatch) else batch.input_ids.numel()

    def loss(self, model: nn.Module, batch, record: dict | None = None) -> torch.Tensor:
        if isinstance(batch, Batch):  # validation: the held-out reference replies' next-token loss
            logits = model(batch.input_ids)
            return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)
        if batch.fresh or batch.slot not in self.slots:
            self.slots[batch.slot] = self.sample(distributed.unwrap(model), batch, record)
        rollouts = self.slots[batch.slot]
        self.last_tokens = rollouts.ids.numel()
        return self.policy_loss(model, rollouts, record)

    @torch.no_grad()
    def sample(self, policy: nn.Module, batch: PromptBatch, record: dict | None) -> Rollouts:
        g, width = self.cfg.group_size, batch.input_ids.shape[1]
        prompts = batch.input_ids.repeat_interleave(g, 0)  # (B * G, P): each prompt's group in a row
        prompt_mask = batch.attention_mask.repeat_interleave(g, 0)
        seq = generate(policy, prompts, self.sampling, self.generator, attention_mask=prompt_mask)
        completions = seq[:, width:]  # (N, C)
        end = completions == self.template.end_id
        ended = end.any(1)
        # a completion's tokens: up to and including its first <|end|> (later ones are padding)
        completion_mask = (end.cumsum(1) - end.long()) == 0
        texts = [self.template.decode(row) for row in completions.tolist()]
        records = [self.records[i] for i in batch.index for _ in range(g)]
        rewards = torch.tensor([self.rewards(r, text, bool(e)) for r, text, e in zip(records, texts, ended.tolist())])
        advantages, flat = group_advantages(rewards, g)
        mask = torch.cat((prompt_mask, torch.ones_like(completions)), 1)
        ref_logp, _ = completion_logps(self.reference, seq, mask, width)
        if record is not None:
            report(record, rewards, flat, completion_mask, ended, records)
        return Rollouts(seq, mask, completion_mask, advantages.to(seq.device), ref_logp)

    def policy_loss(self, model: nn.Module, r: Rollouts, record: dict | None) -> torch.Tensor:
        cfg = self.cfg
        logp, entropy = completion_logps(model, r.ids, r.mask, r.ids.shape[1] - r.completion_mask.shape[1])
        if r.old_logp is None:  # the first update on these samples: the policy is the one that sampled them
            r.old_logp = logp.detach()
        ratio = torch.exp(logp - r.old_logp)
        adv = r.advantages[:, None]
        clipped = ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
        surrogate = torch.minimum(ratio * adv, clipped * adv)
        log_ref_ratio = r.ref_logp - logp
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3: unbiased, >= 0, zero where pi = ref
        per_token = -surrogate + cfg.beta * kl
        m = r.completion_mask.float()
        n = m.sum().clamp(min=1)
        loss = (per_token * m).sum() / n  # token-level: every sampled token weighs the same, long or short
        if record is not None:
            clip_active = ((ratio < 1 - cfg.clip_eps) & (adv < 0)) | ((ratio > 1 + cfg.clip_eps) & (adv > 0))
            for name, value in (("grpo/kl", (kl.detach() * m).sum() / n), ("grpo/entropy", (entropy * m).sum() / n),
                                ("grpo/clip_fraction", (clip_active.float() * m).sum() / n)):
                record.setdefault(name, []).append(value.detach())
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


def report(record: dict, rewards: torch.Tensor, flat: torch.Tensor, completion_mask: torch.Tensor,
           ended: torch.Tensor, records: list[PromptRecord]) -> None:
    values = {"grpo/reward_mean": rewards.mean(), "grpo/reward_std": rewards.std(),
              "grpo/completion_length": completion_mask.sum(1).float().mean(),
              "grpo/ended_fraction": ended.float().mean(), "grpo/zero_spread_groups": flat.float().sum()}
    families: dict[str, list[float]] = {}
    for r, reward in zip(records, rewards.tolist()):
        if "family" in r.fields:
            families.setdefault(r.fields["family"], []).append(reward)
    values |= {f"grpo/reward/{f}": torch.tensor(sum(v) / len(v)) for f, v in sorted(families.items())}
    for name, value in values.items():
        record.setdefault(name, []).append(value.detach().float())


# ---- the stage ----------------------------------------------------------------------------------------------


class GRPO(Stage):
    name = "grpo"
    charts = {"reward": ["Multiline", [r"^grpo/reward"]], "KL to the reference": ["Multiline", [r"^grpo/kl$"]],
              "policy entropy": ["Multiline", [r"^grpo/entropy$"]],
              "completions": ["Multiline", [r"^grpo/(completion_length|ended_fraction)$"]]}
    pinned = ["grpo/reward_mean", "grpo/kl"]
    config = GRPOConfig
    chat = True
    fsdp_problem = ("stage=grpo samples a different number of tokens on each rank, which FSDP's collectives cannot "
                    "follow: use trainer.strategy=ddp")

    def build(self, ctx: StageContext) -> StageParts:
        cfg, stage = ctx.cfg, self.cfg
        model, tokenizer, base = starting_model(cfg)
        context = model.cfg.context_length
        if stage.max_new_tokens >= context:
            raise ConfigError(f"stage.max_new_tokens={stage.max_new_tokens} leaves no room for a prompt in "
                              f"model.context_length={context}")
        model, template = chat_policy(ctx, model, tokenizer)
        reference = copy.deepcopy(model)  # before any adapter: the frozen starting model
        add_adapters(cfg.model.lora, model)

        tasks = isinstance(cfg.data, TasksDataConfig)
        if not tasks and not stage.reward._target_:
            raise ConfigError("stage=grpo data=chat needs a reward: stage.reward._target_=<module.function>")
        items = prepare_chat_items(cfg.data, template, context, Path(cfg.cache_dir))  # validation, held-out tasks
        limit = context - stage.max_new_tokens
        records = task_prompts(cfg.data, template, limit) if tasks else \
            file_prompts(cfg.data.paths, template, limit, cfg.data.val_fraction)
        rewards = Rewards(stage.format_reward, tasks, user_reward(stage.reward._target_), stage.reward._target_)
        trainer, place = cfg.trainer, ctx.place
        objective = GRPOObjective(reference, records, template, rewards, stage,
                                  cfg.seed * 1_000_003 + place.rank, ctx.device)
        train_batches = PromptBatches(records, trainer.batch_size, template.end_id, cfg.seed, trainer.grad_accum_steps,
                                      stage.updates_per_batch, place.rank, place.world_size)
        val_batches = fixed_batches(items.val, trainer.batch_size * place.world_size, tokenizer.eos_id,
                                    trainer.eval_batches)
        evaluators = task_evaluators(model, template, items.eval_tasks, ctx.device,
                                     getattr(cfg.data, "pass_k", 0))
        stats = {**items.stats, "train_prompts": len(records)}
        return StageParts(
            model, objective, train_batches, val_batches,
            steps_per_epoch=train_batches.batches_per_epoch / (trainer.grad_accum_steps / stage.updates_per_batch),
            stats=stats, sample=task_sampler(model, template, items.eval_tasks[:1] if tasks else [], ctx.device),
            describe_batch=lambda b: f"first batch: {len(b.index)} prompts; row 0: {records[b.index[0]].prompt}",
            decode=template.render, evaluators=evaluators, manifest={"base": base, "chat": True},
            data_fingerprint=fingerprint([source_record(cfg.data.kind, records, items.val)]))
