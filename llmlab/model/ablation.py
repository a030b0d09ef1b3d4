"""Head ablation: switch attention heads off for the forwards inside a `with` block, to ask whether a head is the
cause of what the model does or only correlated with it.

A head's output is its slice of the input to its layer's output projection (o_proj), before the heads are mixed.
Zero ablation replaces that slice by zeros; mean ablation by the head's mean output over a reference batch (the
head then says the same thing everywhere: what it contributes on average stays, what it reads from context goes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from llmlab.model.transformer import CausalSelfAttention, Transformer

Head = tuple[int, int]  # (layer, head)


def check_heads(model: Transformer, heads: list[Head]) -> None:
    """ValueError naming the first (layer, head) the model does not have."""
    layers, n_heads = len(model.blocks), model.cfg.n_heads
    for layer, head in heads:
        if not (0 <= layer < layers and 0 <= head < n_heads):
            raise ValueError(f"head L{layer}H{head}: the model has layers 0..{layers - 1} and heads 0..{n_heads - 1}")


@torch.no_grad()
def head_output_means(model: Transformer, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, each head's mean output (H, head_dim) over every position of ids (B, T): for mean ablation."""
    means: list[torch.Tensor | None] = [None] * len(model.blocks)

    def keep(layer: int, attn: CausalSelfAttention):
        def hook(module, args):
            x = args[0]
            means[layer] = x.reshape(-1, attn.n_heads, attn.head_dim).float().mean(0)
        return hook

    handles = [block.attn.o_proj.register_forward_pre_hook(keep(i, block.attn)) for i, block in enumerate(model.blocks)]
    was_training = model.training
    model.eval()
    try:
        model(ids)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return means


@contextlib.contextmanager
def ablated_heads(model: Transformer, heads: list[Head], means: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Inside the block every listed head's output is zero, or its mean from head_output_means when means are
    given. The hooks go whatever happens inside."""
    check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def replace(layer: int, attn: CausalSelfAttention):
        def hook(module, args):
            x = args[0]
            split = x.view(*x.shape[:-1], attn.n_heads, attn.head_dim).clone()  # (B, T, H, head_dim)
            for head in by_layer[layer]:
                split[..., head, :] = 0.0 if means is None else means[layer][head].to(split.dtype)
            return (split.flatten(-2), *args[1:])
        return hook

    handles = [model.blocks[layer].attn.o_proj.register_forward_pre_hook(replace(layer, model.blocks[layer].attn))
               for layer in by_layer]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
