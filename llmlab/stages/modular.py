"""The parts of a pretrain run on modular arithmetic (data=modular): a new model over the task's own vocabulary,
every training pair in each step (or batches of them), the held-out pairs as the validation batch, and accuracy
on both splits at each evaluation. The next-token objective is the one pretraining uses: the batches' targets are
IGNORE everywhere but the answer, so it is the answer's cross-entropy."""

from __future__ import annotations

import dataclasses
import logging
import math

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModularDataConfig
from llmlab.data.batch import Batch
from llmlab.data.fingerprint import fingerprint, source_record
from llmlab.data.modular import ModularBatches, ModularTask, modular_task
from llmlab.model.transformer import Transformer
from llmlab.stages.base import StageContext, StageParts
from llmlab.train.modular_eval import ModularAccuracy
from llmlab.train.objectives import NextTokenObjective

log = logging.getLogger(__name__)

SEQUENCE = 4  # `a op b =`


def modular_parts(ctx: StageContext, data: ModularDataConfig) -> StageParts:
    cfg, trainer = ctx.cfg, ctx.cfg.trainer
    if cfg.model.path:
        raise ConfigError("data=modular trains a new model on its own vocabulary; model.path cannot be used with it")
    if cfg.model.context_length < SEQUENCE:
        raise ConfigError(f"model.context_length={cfg.model.context_length}: data=modular needs >= {SEQUENCE} "
                          "(`a op b =`)")
    if ctx.place.world_size > 1:
        raise ConfigError("data=modular trains in one process (its full batch is not split over ranks)")
    task = modular_task(data)
    model = Transformer(dataclasses.replace(cfg.model, vocab_size=task.vocab_size)).to(ctx.device)
    batch = None if data.full_batch else trainer.batch_size
    per_step = len(task.train_pairs) if batch is None else min(batch, len(task.train_pairs))
    stats = {"kind": "modular", "p": task.p, "op": task.op, "vocab_size": task.vocab_size,
             "train_pairs": len(task.train_pairs), "heldout_pairs": len(task.heldout_pairs),
             "pairs_per_step": per_step, "chance_loss": math.log(task.p)}
    if ctx.place.is_main:
        log.info(f"modular: {task.decode([0, task.op_id, 0, task.equals_id])} ... mod {task.p}, "
                 f"{len(task.train_pairs)} training pairs, {len(task.heldout_pairs)} held out, "
                 f"{per_step} per step")
    return StageParts(
        model, NextTokenObjective(), ModularBatches(task, batch, seed=cfg.seed),
        [task.batch(task.heldout_pairs)],
        steps_per_epoch=len(task.train_pairs) / (per_step * trainer.grad_accum_steps), stats=stats,
        sample=None, describe_batch=describer(task), decode=task.decode, manifest={"base": None},
        evaluators=[ModularAccuracy(model, task, ctx.device)], modular_task=task,
        data_fingerprint=fingerprint([source_record("modular", task.train_pairs, task.heldout_pairs)]))


def describer(task: ModularTask):
    def describe(batch: Batch) -> str:
        return "\n".join([
            f"first batch: input_ids {tuple(batch.input_ids.shape)}, targets {tuple(batch.targets.shape)}",
            f"row 0: {task.decode(batch.input_ids[0].tolist())} {batch.targets[0, -1].item()}",
            f"row 0 targets: {batch.targets[0].tolist()} (only the answer is trained on)",
        ])

    return describe
