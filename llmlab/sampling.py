"""Completions from a trained run, each prompt put the way the run was trained: as a user message in the chat
template for a chat model, as the start of a document otherwise. `python -m llmlab.generate` and the sweep
report's side-by-side generations use it."""

from __future__ import annotations

import sys

import torch

from llmlab.config.commands import GenerateConfig
from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.load import load_trained
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.stages import is_chat_checkpoint
from llmlab.train.checkpoint import read_manifest
from llmlab.train.device import pick_device


def complete(cfg: GenerateConfig) -> list[str]:
    """Completions, num_samples per prompt, in prompt order (without the prompt text)."""
    device = pick_device(cfg.device)
    model, tokenizer, checkpoint = load_trained(cfg.run, device)
    prompts = cfg.prompts or [cfg.prompt]
    if is_chat_checkpoint(read_manifest(checkpoint)):  # a chat model: the prompt is a user message
        template = ChatTemplate(tokenizer)
        stop, decode = template.end_id, template.decode
        encoded = [template.prompt([Message("user", p)]) for p in prompts]
    else:
        stop, decode = tokenizer.eos_id, tokenizer.decode
        encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    unk = getattr(tokenizer, "unk_id", None)
    unknown = sum(ids.count(unk) for ids in encoded) if unk is not None else 0
    if unknown:
        print(f"warning: {unknown} prompt character(s) are not in the tokenizer's vocabulary and became its "
              "unknown token", file=sys.stderr)
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty, use_cache=cfg.use_cache, stop_id=stop if cfg.stop_at_eos else None,
    )
    generator = torch.Generator(device).manual_seed(cfg.seed)
    # one left-padded batch, num_samples rows per prompt in prompt order; the pad id is masked, so any will do
    batch, mask = pad_prompts([e for e in encoded for _ in range(cfg.num_samples)], stop or 0, device)
    texts = []
    for ids in generate(model, batch, sampling, generator, mask)[:, batch.shape[1]:].tolist():
        if stop in ids and cfg.stop_at_eos:
            ids = ids[: ids.index(stop)]
        texts.append(decode(ids))
    return texts
