"""Sampling from a Transformer: greedy or temperature/top-k/top-p, repetition penalty, KV cache.

The next token always depends on at most the last context_length tokens. With the cache, once the
window is full the cache is rebuilt from the last context_length tokens, so cached and uncached
generation see exactly the same inputs and agree token for token under greedy decoding. The cache
therefore pays off until the window fills; past it each token costs a full-window forward.

Prompts of different lengths share a batch left-padded (pad_prompts): the attention mask keeps padding out
of attention and positions, so each row gets exactly what generating it alone gives, window included.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmlab.model.transformer import KVCache, Transformer


@dataclass
class SamplingConfig:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the sequence
    use_cache: bool = True
    stop_id: int | None = None  # stop a sequence once it emits this token (e.g. the tokenizer's eos)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask to -inf all but the top-k tokens and the smallest set whose probability reaches top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


# Below this temperature, fp32 logits / temperature can overflow to inf (and 1e-50 is 0 in fp32), which softmax
# turns into NaN probabilities.
TINY_TEMPERATURE = 1e-4


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature (> 0). A tiny temperature divides in float64 after subtracting each row's largest logit:
    the same distribution (softmax ignores a shift), finite, near greedy as the temperature nears 0."""
    if temperature >= TINY_TEMPERATURE:
        return logits / temperature
    shifted = logits.double() - logits.amax(-1, keepdim=True).double()  # the likeliest token is 0, others < 0
    return shifted / temperature  # -inf for tokens infinitely less likely: never drawn


def pad_prompts(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts to one batch: (ids, attention_mask), both (B, max length), mask 1 on real tokens."""
    if not all(prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def apply_repetition_penalty(logits: torch.Tensor, seq: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive logits (multiply negative ones) of tokens already present in each sequence."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, -1, seq)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, seq, seen)


def real_tokens(seq: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """seq with padding replaced by each row's last token, which is real: the penalty then sees no pad id."""
    return seq if mask is None else torch.where(mask, seq, seq[:, -1:])


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continue a batch of prompts (B, T0); returns (B, T0 + n) with n <= max_new_tokens.

    Prompts of different lengths come left-padded with attention_mask (B, T0), 1 on real tokens (pad_prompts).
    Sequences that emitted stop_id keep emitting it until all have stopped (callers trim after it).
    """
    seq = prompt
    for seq in stream(model, prompt, cfg, generator, attention_mask):
        pass
    return seq


@torch.no_grad()
def stream(
    model: Transformer,
    prompt: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """generate, one token at a time: yields the whole sequence (B, T0 + n) after each new token, so a page can
    show a reply as it is written. The same draws in the same order as generate: the same seed, the same text."""
    model_was_training = model.training
    model.eval()
    try:
        yield from _sample(model, prompt, cfg, generator, attention_mask)
    finally:  # also when the caller stops reading early
        model.train(model_was_training)


def _sample(model, prompt, cfg, generator, attention_mask) -> Iterator[torch.Tensor]:
    window = model.cfg.context_length
    seq = prompt
    # None unless some row is padded: equal-length prompts keep SDPA's causal kernel
    mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
    cache = KVCache.empty(model.cfg.n_layers) if cfg.use_cache else None
    fed = 0  # how many tokens of seq the cache holds
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    for _ in range(cfg.max_new_tokens):
        if cache is None:
            logits = model(seq[:, -window:], attention_mask=None if mask is None else mask[:, -window:])[:, -1]
        else:
            if cache.length + (seq.shape[1] - fed) > window:  # window full: rebuild from its last part
                cache, fed = KVCache.empty(model.cfg.n_layers), max(0, seq.shape[1] - window)
            logits = model(seq[:, fed:], cache, None if mask is None else mask[:, fed:])[:, -1]
            fed = seq.shape[1]
        logits = apply_repetition_penalty(logits.float(), real_tokens(seq, mask), cfg.repetition_penalty)
        if cfg.temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(scale_logits(logits, cfg.temperature), cfg.top_k, cfg.top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if cfg.stop_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, cfg.stop_id), nxt)
            done |= nxt == cfg.stop_id
        seq = torch.cat((seq, nxt[:, None]), dim=1)
        if mask is not None:
            mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
        yield seq
        if cfg.stop_id is not None and bool(done.all()):
            break
