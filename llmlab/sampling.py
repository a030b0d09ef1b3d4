"""Completions from a trained run, each prompt put the way the run was trained: as a user message in the chat
template for a chat model, as the start of a document otherwise. `python -m llmlab.generate`, the sweep report's
side-by-side generations and the chat page (`python -m llmlab.chat`) use it, so all three give the same text for
the same prompt, seed and settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.config.commands import GenerateConfig, SamplingSettings
from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tokenizers import Tokenizer
from llmlab.load import load_trained
from llmlab.model.generation import SamplingConfig, generate, pad_prompts, stream
from llmlab.model.transformer import Transformer
from llmlab.stages import is_chat_checkpoint
from llmlab.train.checkpoint import read_manifest
from llmlab.train.device import pick_device

log = logging.getLogger(__name__)


@dataclass
class Speaker:
    """A trained run ready to answer: its model and how a prompt is put to it."""

    model: Transformer
    tokenizer: Tokenizer
    checkpoint: Path
    manifest: dict  # the checkpoint's, verified by load_trained
    device: torch.device

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", checkpoint: str = "latest") -> Speaker:
        where = pick_device(device)
        model, tokenizer, checkpoint = load_trained(run, where, checkpoint)
        return cls(model, tokenizer, checkpoint, read_manifest(checkpoint), where)

    @property
    def chat(self) -> bool:
        """Whether the model answers in the chat template (else it continues a document)."""
        return is_chat_checkpoint(self.manifest)

    @property
    def stop_id(self) -> int:
        return ChatTemplate(self.tokenizer).end_id if self.chat else self.tokenizer.eos_id

    def encode(self, prompt: str, history: Sequence[Message] = ()) -> list[int]:
        """A chat model: the conversation so far (system prompt first, if any) and prompt as the user's next
        message. Otherwise prompt as the start of a document (history is not used)."""
        if self.chat:
            return ChatTemplate(self.tokenizer).prompt([*history, Message("user", prompt)])
        return [self.tokenizer.bos_id, *self.tokenizer.encode(prompt)]

    def decode(self, ids: list[int], at_stop: bool = True) -> str:
        """The text of generated ids, up to the stop token (at_stop=False: a document's eos does not end it)."""
        if at_stop and self.stop_id in ids:
            ids = ids[: ids.index(self.stop_id)]
        return ChatTemplate(self.tokenizer).decode(ids) if self.chat else self.tokenizer.decode(ids)

    def unknown(self, ids: list[int]) -> int:
        """How many of the ids are the tokenizer's unknown token (characters it has never seen)."""
        unk = getattr(self.tokenizer, "unk_id", None)
        return ids.count(unk) if unk is not None else 0

    def reply(self, ids: list[int], settings: SamplingSettings) -> Iterator[str]:
        """The text generated after ids so far, once per new token, until the stop token or max_new_tokens: what
        complete() gives for the same prompt and settings (the same draws from a generator seeded alike)."""
        generator = torch.Generator(self.device).manual_seed(settings.seed)
        prompt = torch.tensor([ids], device=self.device)
        for seq in stream(self.model, prompt, sampling_config(settings, self.stop_id), generator):
            new = seq[0, len(ids):].tolist()
            if new[-1] != self.stop_id:  # the stop token adds no text; the stream ends with it
                yield self.decode(new)


def sampling_config(settings: SamplingSettings, stop_id: int | None, use_cache: bool = True) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, repetition_penalty=settings.repetition_penalty, use_cache=use_cache, stop_id=stop_id)


@dataclass
class Completion:
    text: str  # without the prompt, up to the stop token
    tokens: int  # generated before the stop token (all of them when it never came)
    ended: bool  # the stop token came within max_new_tokens
    reply: bool = False  # a chat model's reply to the prompt (else the prompt's continuation)


def completions(cfg: GenerateConfig) -> list[Completion]:
    """num_samples completions per prompt, in prompt order, from one left-padded batch."""
    speaker = Speaker.load(cfg.run, cfg.device, cfg.checkpoint)
    prompts = cfg.prompts or [cfg.prompt]
    encoded = [speaker.encode(p) for p in prompts]
    unknown = sum(speaker.unknown(ids) for ids in encoded)
    if unknown:
        log.warning(f"warning: {unknown} prompt character(s) are not in the tokenizer's vocabulary and became its "
                    "unknown token")
    stop = speaker.stop_id
    sampling = sampling_config(cfg, stop if cfg.stop_at_eos else None, cfg.use_cache)
    generator = torch.Generator(speaker.device).manual_seed(cfg.seed)
    # one left-padded batch, num_samples rows per prompt in prompt order; the pad id is masked, so any will do
    batch, mask = pad_prompts([e for e in encoded for _ in range(cfg.num_samples)], stop or 0, speaker.device)
    out = []
    for ids in generate(speaker.model, batch, sampling, generator, mask)[:, batch.shape[1]:].tolist():
        ended = stop in ids
        out.append(Completion(speaker.decode(ids, at_stop=cfg.stop_at_eos),
                              ids.index(stop) if ended else len(ids), ended, speaker.chat))
    return out


def complete(cfg: GenerateConfig) -> list[str]:
    """Completions, num_samples per prompt, in prompt order (without the prompt text)."""
    return [c.text for c in completions(cfg)]
