"""What the chat stages (sft, dpo) train: the starting model and its tokenizer, the chat template's extra
embeddings, LoRA adapters, batches of encoded conversations or pairs, the objective, and task scoring."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import RunConfig, TasksDataConfig
from llmlab.data.chat_batches import ChatBatches, fixed_batches
from llmlab.data.chat_template import ChatTemplate, resize_vocab
from llmlab.data.post_training import prepare_chat_items
from llmlab.data.tokenizers import Tokenizer
from llmlab.model.lora import apply_lora, count_parameters
from llmlab.model.transformer import Transformer
from llmlab.train.distributed import SINGLE, Distributed
from llmlab.train.dpo import DPOObjective
from llmlab.train.objectives import NextTokenObjective, Objective
from llmlab.train.task_eval import task_accuracy, task_replies

ARCHITECTURE = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "positions", "norm", "mlp",
                "tie_embeddings", "bias", "rope_theta", "rope_scaling")


@dataclass
class ChatStage:
    model: Transformer
    tokenizer: Tokenizer
    template: ChatTemplate
    train_batches: ChatBatches
    val_batches: list
    objective: Objective
    stats: dict
    eval_fn: Callable[[int], dict[str, float]] | None
    sample_fn: Callable[[int], str]
    describe_batch: Callable[[dict], str]
    base: str  # what the run starts from: a checkpoint directory, or hf:<model.path>


def starting_model(cfg: RunConfig) -> tuple[Transformer, Tokenizer, str]:
    """stage.init_from's model and tokenizer (or model=hf's) and where they came from; the architecture must
    be the config's."""
    if cfg.stage.init_from:
        from llmlab.load import load_trained

        model, tokenizer, checkpoint = load_trained(cfg.stage.init_from)
        if model.cfg.lora.rank:
            raise ConfigError(f"stage.init_from={cfg.stage.init_from} has LoRA adapters: merge them first "
                              "(python -m llmlab.merge_lora run=...)")
        differing = [k for k in ARCHITECTURE if getattr(model.cfg, k) != getattr(cfg.model, k)]
        if differing and not cfg.model.path:
            pairs = ", ".join(f"model.{k}: {getattr(model.cfg, k)!r} there vs {getattr(cfg.model, k)!r} here"
                              for k in differing)
            raise ConfigError(f"stage.init_from={cfg.stage.init_from} has another architecture ({pairs}); "
                              "pass the model=/arch= options its run used")
        return model, tokenizer, str(checkpoint.resolve())
    from llmlab.interop.hf_import import PretrainedTokenizer, load_pretrained_weights

    model = Transformer.uninitialized(cfg.model)
    load_pretrained_weights(model, cfg.model)
    return model, PretrainedTokenizer.from_model_dir(cfg.model), f"hf:{cfg.model.path}"


def build_chat_stage(cfg: RunConfig, device: torch.device, place: Distributed = SINGLE) -> ChatStage:
    model, tokenizer, base = starting_model(cfg)
    template = ChatTemplate(tokenizer)
    resize_vocab(model, template.vocab_size)  # the role markers' embeddings, new to a pretrained model
    context = model.cfg.context_length
    model.cfg = dataclasses.replace(model.cfg, name=cfg.model.name, lora=cfg.model.lora)  # adapters added below
    model = model.to(device).train()

    objective: Objective = NextTokenObjective()
    if cfg.stage.name == "dpo":  # the reference is the starting model, frozen, before any adapter
        objective = DPOObjective(copy.deepcopy(model), cfg.stage.beta)
    lora = cfg.model.lora
    if lora.rank:
        adapted = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
        trainable, total = count_parameters(model)
        print(f"LoRA rank {lora.rank} on {len(adapted)} layers: {trainable:,} trainable of {total:,} parameters")

    items = prepare_chat_items(cfg.data, template, context)
    pad = tokenizer.eos_id  # padded positions are never targets, any id will do
    trainer = cfg.trainer
    train_batches = ChatBatches(items.train, trainer.batch_size, pad, cfg.seed, place.rank, place.world_size)
    # every rank evaluates the whole validation set, batched as one process with the global batch would
    val_batches = fixed_batches(items.val, trainer.batch_size * place.world_size, pad, trainer.eval_batches)
    eval_fn = None
    if items.eval_tasks:
        def eval_fn(step: int) -> dict[str, float]:
            scores = task_accuracy(model, template, items.eval_tasks, device)
            return {f"eval/task_accuracy{'' if k == 'all' else '/' + k}": v for k, v in scores.items()}

    shown = items.eval_tasks[:1] if isinstance(cfg.data, TasksDataConfig) else []

    def sample_fn(step: int) -> str:
        if not shown:
            return ""
        reply = task_replies(model, template, shown, device)[0]
        return f"{shown[0].prompt} -> {reply!r} (expected {shown[0].answer!r})"

    def describe_batch(batch: dict) -> str:
        ids, targets = batch["input_ids"][0].tolist(), batch["targets"][0].tolist()
        masked = [t for t in targets if t >= 0]
        return "\n".join([
            f"first batch: input_ids {tuple(batch['input_ids'].shape)}, targets {tuple(batch['targets'].shape)}",
            f"row 0 text: {template.render(ids)}",
            f"row 0 ids: {ids}",
            f"row 0 loss mask: {''.join('1' if t >= 0 else '0' for t in targets)}",
            f"row 0 trained on: {template.render(masked)!r} ({len(masked)} of {len(targets)} tokens)",
        ])

    return ChatStage(model, tokenizer, template, train_batches, val_batches, objective, items.stats, eval_fn,
                     sample_fn, describe_batch, base)
