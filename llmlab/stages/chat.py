"""The chat stages: SFT (next-token loss on the assistant's replies) and DPO (preference loss against the frozen
starting model). Both start from a trained model and its tokenizer (stage.init_from, or model=hf), add the chat
template's marker embeddings and optional LoRA adapters, and train on encoded conversations or pairs."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import LoRAConfig, RunConfig, TasksDataConfig, architecture_differences
from llmlab.config.stages import DPOConfig, SFTConfig
from llmlab.data.batch import Batch
from llmlab.data.chat_batches import ChatBatches, fixed_batches
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.fingerprint import fingerprint, source_record
from llmlab.data.post_training import prepare_chat_items
from llmlab.data.tokenizers import Tokenizer
from llmlab.load import load_trained
from llmlab.model.lora import apply_lora, count_parameters
from llmlab.model.transformer import Transformer
from llmlab.rundir import RunDir
from llmlab.stages.base import Stage, StageContext, StageParts
from llmlab.train.bits_per_byte import utf8_bytes
from llmlab.train.evaluators import task_evaluators
from llmlab.train.objectives import DPOObjective, NextTokenObjective, Objective
from llmlab.train.task_eval import task_replies

log = logging.getLogger(__name__)


class ChatStage(Stage):
    """What SFT and DPO share; a subclass says which objective trains the policy."""

    chat = True

    def objective(self, model: Transformer) -> Objective:
        raise NotImplementedError

    def build(self, ctx: StageContext) -> StageParts:
        cfg = ctx.cfg
        model, tokenizer, base = starting_model(cfg)
        model, template = chat_policy(ctx, model, tokenizer)
        context = model.cfg.context_length
        objective = self.objective(model)  # before any adapter: DPO's reference is the starting model
        add_adapters(cfg.model.lora, model)

        items = prepare_chat_items(cfg.data, template, context, Path(cfg.cache_dir))
        pad = tokenizer.eos_id  # padded positions are never targets, any id will do
        trainer, place = cfg.trainer, ctx.place
        train_batches = ChatBatches(items.train, trainer.batch_size, pad, cfg.seed, place.rank, place.world_size)
        # every rank evaluates the whole validation set, batched as one process with the global batch would
        val_batches = fixed_batches(items.val, trainer.batch_size * place.world_size, pad, trainer.eval_batches)
        evaluators = task_evaluators(model, template, items.eval_tasks, ctx.device,
                                     getattr(cfg.data, "pass_k", 0))
        shown = items.eval_tasks[:1] if isinstance(cfg.data, TasksDataConfig) else []
        return StageParts(
            model, objective, train_batches, val_batches,
            steps_per_epoch=train_batches.batches_per_epoch / trainer.grad_accum_steps, stats=items.stats,
            sample=task_sampler(model, template, shown, ctx.device), describe_batch=describer(template),
            decode=template.render, evaluators=evaluators, manifest={"base": base, "chat": True},
            data_fingerprint=fingerprint([source_record(cfg.data.kind, items.train, items.val)]),
            text_bytes=utf8_bytes(lambda ids: tokenizer.decode([i for i in ids if i < tokenizer.vocab_size])))


class SFT(ChatStage):
    name = "sft"
    config = SFTConfig

    def objective(self, model: Transformer) -> Objective:
        return NextTokenObjective()


class DPO(ChatStage):
    name = "dpo"
    config = DPOConfig
    charts = {"reward margin": ["Multiline", [r"^dpo/reward_margin$", r"^val/dpo/reward_margin$"]],
              "reward accuracy": ["Multiline", [r"^dpo/reward_accuracy$", r"^val/dpo/reward_accuracy$"]],
              "log-probabilities": ["Multiline", [r"^dpo/(chosen|rejected)_logp$"]]}
    pinned = ["dpo/reward_margin", "dpo/reward_accuracy"]

    def objective(self, model: Transformer) -> Objective:
        # the reference: frozen, without adapters
        return DPOObjective(copy.deepcopy(model), self.cfg.beta, self.cfg.nll_weight)


def chat_policy(ctx: StageContext, model: Transformer, tokenizer: Tokenizer) -> tuple[Transformer, ChatTemplate]:
    """The starting model made a chat policy: the chat template's role-marker embeddings added (new to a pretrained
    model), named and configured for this run, on the device in train mode; the run's tokenizer saved (a resumed
    run finds the tokenizer it trained with there, and load_trained does too)."""
    cfg = ctx.cfg
    template = ChatTemplate(tokenizer)
    model.resize_vocab(template.vocab_size)
    model.cfg = dataclasses.replace(model.cfg, name=cfg.model.name, lora=cfg.model.lora)  # adapters: add_adapters
    own = RunDir(ctx.out_dir).tokenizer
    if ctx.place.is_main and not own.is_dir():
        tokenizer.save(own)
    return model.to(ctx.device).train(), template


def add_adapters(lora: LoRAConfig, model: Transformer) -> None:
    """LoRA adapters where model.lora.rank asks for them (then only they train); after any frozen copy of the
    starting model (a reference) was taken."""
    if lora.rank:
        adapted = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
        trainable, total = count_parameters(model)
        log.info(f"LoRA rank {lora.rank} on {len(adapted)} layers: {trainable:,} trainable of {total:,} parameters")


def starting_model(cfg: RunConfig) -> tuple[Transformer, Tokenizer, str]:
    """stage.init_from's model and tokenizer (or model=hf's) and where they came from; the architecture must
    be the config's."""
    if cfg.stage.init_from:
        model, tokenizer, checkpoint = load_trained(cfg.stage.init_from)
        if model.cfg.lora.rank:
            raise ConfigError(f"stage.init_from={cfg.stage.init_from} has LoRA adapters: merge them first "
                              "(python -m llmlab.merge_lora run=...)")
        differing = architecture_differences(dataclasses.asdict(model.cfg), cfg.model)
        if differing and not cfg.model.path:
            pairs = ", ".join(f"model.{k}: {there!r} there vs {here!r} here" for k, there, here in differing)
            raise ConfigError(f"stage.init_from={cfg.stage.init_from} has another architecture ({pairs}); "
                              "pass the model=/arch= options its run used")
        return model, tokenizer, str(checkpoint.resolve())
    from llmlab.interop.hf_import import load_pretrained_weights, pretrained_tokenizer

    model = Transformer.uninitialized(cfg.model)
    load_pretrained_weights(model, cfg.model)
    return model, pretrained_tokenizer(cfg.model), f"hf:{cfg.model.path}"


def task_sampler(model: Transformer, template: ChatTemplate, shown: list, device: torch.device):
    """The greedy reply to the first held-out task, beside the expected one ("" without embedded tasks)."""

    def sample(step: int) -> str:
        if not shown:
            return ""
        reply = task_replies(model, template, shown, device)[0]
        return f"{shown[0].prompt} -> {reply!r} (expected {shown[0].answer!r})"

    return sample


def describer(template: ChatTemplate):
    def describe(batch: Batch) -> str:
        ids, targets = batch.input_ids[0].tolist(), batch.targets[0].tolist()
        masked = [t for t in targets if t >= 0]
        return "\n".join([
            f"first batch: input_ids {tuple(batch.input_ids.shape)}, targets {tuple(batch.targets.shape)}",
            f"row 0 text: {template.render(ids)}",
            f"row 0 ids: {ids}",
            f"row 0 loss mask: {''.join('1' if t >= 0 else '0' for t in targets)}",
            f"row 0 trained on: {template.render(masked)!r} ({len(masked)} of {len(targets)} tokens)",
        ])

    return describe
