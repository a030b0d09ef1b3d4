"""The decoder: shapes, causality, every architecture switch, and cached generation."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmlab.config.schema import ModelConfig
from llmlab.model.generation import SamplingConfig, apply_repetition_penalty, filter_logits, generate, stream
from llmlab.model.transformer import Transformer

ARCHS = [
    dict(positions=p, norm=n, mlp=m)
    for p, n, m in itertools.product(["learned", "rope"], ["layernorm", "rmsnorm"], ["gelu", "swiglu"])
]


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=23)
    return Transformer(ModelConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(a.values()))
def test_shapes_and_causality(arch):
    model = tiny(**arch)
    x = torch.randint(0, 23, (3, 16))
    logits = model(x)
    assert logits.shape == (3, 16, 23)
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 23  # change only the future
    assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-6)
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_grouped_query_attention_shrinks_kv_projections(kv_heads):
    model = tiny(n_kv_heads=kv_heads)
    attn = model.blocks[0].attn
    assert attn.k_proj.out_features == attn.v_proj.out_features == kv_heads * 8
    assert model(torch.randint(0, 23, (2, 16))).shape == (2, 16, 23)


def test_tied_embeddings_share_one_tensor_and_are_counted_once():
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 23 * 32


def test_bias_switch_adds_biases():
    assert all(m.bias is None for m in tiny(bias=False).modules() if isinstance(m, torch.nn.Linear))
    with_bias = [m for m in tiny(bias=True).modules() if isinstance(m, torch.nn.Linear)]
    assert sum(m.bias is not None for m in with_bias) == len(with_bias) - 1  # all but the lm_head


def test_too_long_input_names_the_limit():
    with pytest.raises(ValueError, match="context_length=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("arch", [ARCHS[0], ARCHS[-1]], ids=["gpt2ish", "llamaish"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_kv_cache_generation_equals_uncached_greedy_even_past_the_window(arch, kv_heads):
    model = tiny(n_kv_heads=kv_heads, **arch)
    prompt = torch.randint(0, 23, (2, 5))
    cfg = dict(max_new_tokens=30, temperature=0.0)  # 35 tokens > context_length=16: the window slides
    cached = generate(model, prompt, SamplingConfig(**cfg, use_cache=True))
    uncached = generate(model, prompt, SamplingConfig(**cfg, use_cache=False))
    assert cached.shape == (2, 35)
    assert torch.equal(cached, uncached)


def test_cached_logits_match_full_forward():
    model = tiny()
    from llmlab.model.transformer import KVCache

    x = torch.randint(0, 23, (2, 12))
    cache = KVCache.empty(2)
    step_logits = [model(x[:, :7], cache)[:, -1]] + [model(x[:, i:i + 1], cache)[:, -1] for i in range(7, 12)]
    full = model(x)
    assert torch.allclose(torch.stack(step_logits, 1), full[:, 6:], atol=1e-5)


def test_prompt_longer_than_context_slides():
    model = tiny()
    out = generate(model, torch.randint(0, 23, (1, 40)), SamplingConfig(max_new_tokens=3, temperature=0.0))
    assert out.shape == (1, 43)


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    # top_p=0.7: 0.5 alone is not enough, 0.5 + 0.3 reaches it; the rest is cut
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(filter_logits(logits, top_k=0, top_p=1.0)).any()


def test_sampling_is_reproducible_with_a_seeded_generator_and_stops_at_stop_id():
    model = tiny()
    prompt = torch.zeros(4, 1, dtype=torch.long)
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=10, top_p=0.9, repetition_penalty=1.3)
    a = generate(model, prompt, cfg, torch.Generator().manual_seed(1))
    b = generate(model, prompt, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    stop = a[0, 3].item()
    c = generate(model, prompt, SamplingConfig(**{**cfg.__dict__, "stop_id": stop}), torch.Generator().manual_seed(1))
    first = (c[0, 1:] == stop).nonzero()[0].item() + 1
    assert (c[0, first:] == stop).all()


def test_repetition_penalty_lowers_only_the_tokens_already_in_the_sequence():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[0, 1, 0]])  # tokens 0 (twice) and 1 are in the sequence
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # positive halved, negative doubled, the others as they were
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_stream_yields_each_token_as_it_is_drawn_and_ends_where_generate_does():
    model = tiny()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=10, top_p=0.9, repetition_penalty=1.3)
    steps = list(stream(model, prompt, cfg, torch.Generator().manual_seed(4)))
    assert [s.shape[1] for s in steps] == list(range(4, 16))  # one more token per update
    assert all(torch.equal(a, b[:, :a.shape[1]]) for a, b in zip(steps, steps[1:]))  # each extends the one before
    assert torch.equal(steps[-1], generate(model, prompt, cfg, torch.Generator().manual_seed(4)))
    assert not model.training  # tiny() is in eval mode and the stream left it so
    model.train()
    unread = stream(model, prompt, cfg)
    next(unread)
    assert not model.training
    unread.close()  # a page whose user stopped reading: the model is given back in the mode it was in
    assert model.training
