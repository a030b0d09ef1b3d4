"""GRPO: reinforcement learning from verifiable rewards, the policy its own baseline (group-relative policy
optimisation, as in DeepSeekMath; token-level averaging, clip-higher and dynamic sampling as in DAPO).

The stage wires three parts: the rollout source (llmlab.train.rollouts: prompt order, sampling, rewards and
advantages, checkpointed with the data position), the reward functions (llmlab.train.rewards: named, batched,
weighted; stage.rewards adds the user's) and the objective (llmlab.train.objectives.grpo: the clipped surrogate and
the KL to the frozen start). Validation is the next-token loss of the held-out reference replies.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TasksDataConfig
from llmlab.config.stages import GRPOConfig
from llmlab.data.chat import Message, expand, parse_conversation, read_records
from llmlab.data.chat_batches import fixed_batches
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.fingerprint import fingerprint, source_record
from llmlab.data.post_training import prepare_chat_items, tasks_of
from llmlab.stages.base import Stage, StageContext, StageParts
from llmlab.stages.chat import add_adapters, chat_policy, starting_model, task_sampler
from llmlab.train.evaluators import task_evaluators
from llmlab.train.objectives import GRPOObjective, NextTokenObjective
from llmlab.train.rewards import PromptRecord, RewardFunction, Rewards, locate, task_correct
from llmlab.train.rollouts import PromptOrder, RolloutConfig, RolloutSource

log = logging.getLogger(__name__)


# ---- prompts ------------------------------------------------------------------------------------------------


def fitting(prompts: list[PromptRecord], limit: int, what: str) -> list[PromptRecord]:
    """The prompts that fit in `limit` tokens (the context less max_new_tokens); the others are dropped with one
    warning line, never cut (a cut prompt loses its start: <|user|> and the first words)."""
    kept = [p for p in prompts if len(p.ids) <= limit]
    if len(kept) < len(prompts):
        longest = max(len(p.ids) for p in prompts)
        if not kept:
            raise ConfigError(f"every {what} is longer than model.context_length - stage.max_new_tokens = {limit} "
                              f"tokens (the longest: {longest}): lower stage.max_new_tokens")
        log.warning(f"warning: {len(prompts) - len(kept)} of {len(prompts)} {what}s are longer than "
                    f"model.context_length - stage.max_new_tokens = {limit} tokens (the longest: {longest}) and "
                    "are left out")
    return kept


def task_prompts(data: TasksDataConfig, template: ChatTemplate) -> list[PromptRecord]:
    tasks = tasks_of(data, "train", data.train_tasks)
    return [PromptRecord(template.prompt([Message("user", t.prompt)]), t.prompt, dataclasses.asdict(t),
                         f"train task {i} ({t.family})") for i, t in enumerate(tasks)]


def file_prompts(paths: list[str], template: ChatTemplate, val_fraction: float) -> list[PromptRecord]:
    """The training part of data=chat records (the same split as its validation): each conversation up to its
    last assistant reply is a prompt; the whole record goes to the reward."""
    records = [(record, where) for path in expand(paths) for record, where in read_records(path)]
    records = records[:-max(1, round(len(records) * val_fraction))]
    prompts = []
    for record, where in records:
        messages = parse_conversation(record, where)[:-1]  # the reply is the user's reward's business
        prompts.append(PromptRecord(template.prompt(messages), messages[-1].content, record, where))
    return prompts


def reward_functions(stage: GRPOConfig, tasks: bool) -> Rewards:
    builtin = [RewardFunction("correct", task_correct, 1.0, "the built-in reward correct")] if tasks else []
    user = [RewardFunction(r.name, locate(r._target_, f"stage.rewards[{i}]._target_"), r.weight,
                           f"stage.rewards[{i}] ({r._target_})") for i, r in enumerate(stage.rewards)]
    return Rewards([*builtin, *user], stage.format_reward)


def check_rollout_memory(rows: int, length: int, vocab: int, device: torch.device) -> None:
    """Refuse a batch of rollouts whose logits alone cannot fit (the forward holds them in float32 about three
    times: logits, log-softmax, its gradient)."""
    need = rows * length * vocab * 4 * 3
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"trainer.batch_size x stage.group_size = {rows} completions of up to {length} tokens need "
                          f"about {need / 2**30:.1f} GiB for their logits alone, more than the "
                          f"{have / 2**30:.1f} GiB of {device.type}: lower stage.group_size or trainer.batch_size")


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
        trainer, place = cfg.trainer, ctx.place
        check_rollout_memory(trainer.batch_size * stage.group_size, context, model.cfg.vocab_size, ctx.device)
        model, template = chat_policy(ctx, model, tokenizer)
        reference = copy.deepcopy(model)  # before any adapter: the frozen starting model
        add_adapters(cfg.model.lora, model)

        tasks = isinstance(cfg.data, TasksDataConfig)
        if not tasks and not stage.rewards:
            raise ConfigError("stage=grpo data=chat needs a reward: stage.rewards=[{name: <name>, _target_: "
                              "<module.function>}]")
        rewards = reward_functions(stage, tasks)
        items = prepare_chat_items(cfg.data, template, context, Path(cfg.cache_dir))  # validation, held-out tasks
        limit = context - stage.max_new_tokens
        records = fitting(task_prompts(cfg.data, template) if tasks else
                          file_prompts(cfg.data.paths, template, cfg.data.val_fraction), limit, "training prompt")
        order = PromptOrder(len(records), trainer.batch_size, cfg.seed, place.rank, place.world_size)
        rollout_cfg = RolloutConfig(stage.group_size, stage.temperature, stage.max_new_tokens,
                                    stage.updates_per_batch, stage.dynamic_sampling, stage.max_draws)
        rollouts = RolloutSource(model, reference, records, template, rewards, rollout_cfg, order,
                                 trainer.grad_accum_steps, cfg.seed * 1_000_003 + place.rank, ctx.device)
        val_batches = fixed_batches(items.val, trainer.batch_size * place.world_size, tokenizer.eos_id,
                                    trainer.eval_batches)
        evaluators = task_evaluators(model, template, items.eval_tasks, ctx.device,
                                     getattr(cfg.data, "pass_k", 0))
        stats = {**items.stats, "train_prompts": len(records)}

        def describe(b) -> str:
            return (f"first batch: {b.ids.shape[0] // stage.group_size} prompts x {stage.group_size} completions; "
                    f"row 0: {template.render(b.ids[0][b.mask[0].bool()].tolist())!r}")

        return StageParts(
            model, GRPOObjective(stage.beta, stage.clip_eps, stage.clip_eps_high), rollouts, val_batches,
            steps_per_epoch=order.batches_per_epoch / (trainer.grad_accum_steps / stage.updates_per_batch),
            stats=stats, sample=task_sampler(model, template, items.eval_tasks[:1] if tasks else [], ctx.device),
            describe_batch=describe, decode=template.render, evaluators=evaluators,
            manifest={"base": base, "chat": True}, val_objective=NextTokenObjective(),
            data_fingerprint=fingerprint([source_record(cfg.data.kind, records, items.val)]))
