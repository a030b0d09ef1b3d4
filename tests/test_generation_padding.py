"""Left-padded batches: each row gets what it gets alone, in logits and in greedy tokens, window included."""

from __future__ import annotations

import pytest
import torch

from llmlab.config.schema import ModelConfig
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.model.transformer import KVCache, Transformer, attention_probabilities

ARCHS = {
    "llama": dict(),
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", bias=True),
    "gqa": dict(n_kv_heads=2),
}
LENGTHS = (3, 7, 12)


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(vocab_size=50, n_layers=2, d_model=32, n_heads=4, context_length=24)
    return Transformer(ModelConfig(**{**base, **kw})).eval()


def prompts(lengths=LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (n,), generator=g).tolist() for n in lengths]


def test_pad_prompts_pads_on_the_left():
    ids, mask = pad_prompts([[5, 6], [7]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        pad_prompts([[1], []], pad_id=0, device="cpu")


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_padded_logits_equal_each_rows_own(arch):
    model = tiny(**arch)
    rows = prompts()
    ids, mask = pad_prompts(rows, pad_id=49, device="cpu")
    logits = model(ids, attention_mask=mask)
    assert torch.isfinite(logits).all()  # padding queries see themselves: no NaN from an empty softmax
    for row, p in zip(logits, rows, strict=True):
        alone = model(torch.tensor([p]))[0]
        assert torch.allclose(row[-len(p):], alone, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_padded_cache_steps_equal_each_rows_own(arch):
    model = tiny(**arch)
    rows = prompts()
    ids, mask = pad_prompts(rows, pad_id=0, device="cpu")
    cache = KVCache.empty(2)
    model(ids, cache, mask)
    step = model(torch.tensor([[4], [5], [6]]), cache)[:, -1]  # the cache remembers the padding
    for i, p in enumerate(rows):
        assert torch.allclose(step[i], model(torch.tensor([[*p, 4 + i]]))[0, -1], atol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("new", [5, 20], ids=["in-window", "past-window"])  # 12 + 20 > context_length=24
@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_padded_greedy_generation_equals_each_row_alone(arch, new, use_cache):
    model = tiny(**arch)
    rows = prompts()
    cfg = SamplingConfig(max_new_tokens=new, temperature=0.0, repetition_penalty=1.3, use_cache=use_cache)
    ids, mask = pad_prompts(rows, pad_id=0, device="cpu")
    out = generate(model, ids, cfg, attention_mask=mask)
    assert out.shape == (3, 12 + new)
    for row, p in zip(out, rows, strict=True):
        alone = generate(model, torch.tensor([p]), cfg)[0]
        assert row[-(len(p) + new):].tolist() == alone.tolist()


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_all_ones_mask_matches_the_unmasked_path(arch):
    model = tiny(**arch)
    x = torch.randint(0, 50, (2, 10))
    assert torch.allclose(model(x, attention_mask=torch.ones_like(x)), model(x), atol=1e-5)
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.0)
    assert torch.equal(generate(model, x, cfg, attention_mask=torch.ones_like(x)), generate(model, x, cfg))


def test_attention_probabilities_still_work_after_a_padded_forward():
    model = tiny()
    ids, mask = pad_prompts(prompts(), pad_id=0, device="cpu")
    model(ids, attention_mask=mask)
    logits, probs = attention_probabilities(model, ids)
    assert logits.shape == (3, 12, 50) and probs[0].shape == (3, 4, 12, 12)
    assert torch.allclose(probs[0].sum(-1), torch.ones(3, 4, 12))


def test_explicit_attention_honours_the_padding_mask():
    model = tiny()
    ids, mask = pad_prompts(prompts(), pad_id=0, device="cpu")
    sdpa = model(ids, attention_mask=mask)
    for block in model.blocks:
        block.attn.keep_probs = True
    assert torch.allclose(model(ids, attention_mask=mask), sdpa, atol=1e-5)
