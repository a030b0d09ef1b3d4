"""LoRA adapters: a fresh adapter is a no-op, only adapters train, merging and saving keep the logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmlab.config.schema import ModelConfig
from llmlab.model.generation import SamplingConfig, generate
from llmlab.model.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from llmlab.model.transformer import Transformer, attention_probabilities
from llmlab.monitors.base import probe_forward

VOCAB = 40
LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True)
GPT2 = dict(positions="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False)


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=VOCAB)
    return Transformer(ModelConfig(**{**base, **kw})).eval()


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(seed))


def lm_loss(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))


def train(model: Transformer, steps: int = 10) -> list[float]:
    """A few AdamW steps on one batch; every parameter is handed over, so freezing is what keeps the base fixed."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, losses = batch(), []
    model.train()
    for _ in range(steps):
        loss = lm_loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def trained_lora(arch=LLAMA, targets=("all",)) -> Transformer:
    model = tiny(**arch)
    apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=list(targets))
    train(model)
    return model.eval()


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_fresh_adapter_leaves_logits_unchanged(arch):
    model = tiny(**arch)
    x = batch()
    before = model(x)
    apply_lora(model, rank=4, alpha=16.0, dropout=0.1, targets=["all"])
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_only_adapters_train(arch):
    model = tiny(**arch)
    base = {name: t.clone() for name, t in model.state_dict().items()}
    adapted = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}" for m in adapted for ab in "AB"}
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_adapter == 2 * 2 * 4 * (32 + 32)  # 2 layers x (q, v) x rank x (in + out)
    assert count_parameters(model) == (n_adapter, model.num_params())

    losses = train(model)
    assert losses[-1] < losses[0]
    after = model.state_dict()
    for name, t in base.items():
        assert torch.equal(after[name], t), name
    assert all(not torch.equal(after[name], torch.zeros_like(after[name])) for name in lora_state_dict(model))


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_merge_matches_unmerged_logits(arch):
    base_keys = list(tiny(**arch).state_dict())
    model = trained_lora(arch)
    x = batch(seed=2)
    expected = model(x)
    q_weight = model.blocks[0].attn.q_proj.weight
    assert merge_lora(model) == 2 * (7 if arch["mlp"] == "swiglu" else 6)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == base_keys
    assert model.blocks[0].attn.q_proj.weight is q_weight  # merged in place, not copied
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_lora_state_dict_round_trip():
    model = trained_lora()
    state = lora_state_dict(model)
    assert state and all(name.endswith((".lora_A", ".lora_B")) for name in state)

    fresh = tiny(**LLAMA)
    apply_lora(fresh, rank=4, alpha=8.0, dropout=0.0, targets=["all"])
    load_lora_state_dict(fresh, state)
    x = batch(seed=3)
    assert torch.equal(fresh(x), model(x))

    missing = dict(state)
    missing.pop("blocks.1.mlp.down_proj.lora_B")
    with pytest.raises(ValueError, match="missing.*blocks.1.mlp.down_proj.lora_B"):
        load_lora_state_dict(fresh, missing)
    with pytest.raises(ValueError, match="unexpected.*lm_head.lora_A"):
        load_lora_state_dict(fresh, {**state, "lm_head.lora_A": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match="apply_lora first"):
        load_lora_state_dict(tiny(**LLAMA), state)


def test_targets_all_list_and_errors():
    every = apply_lora(tiny(**LLAMA), rank=2, alpha=2.0, dropout=0.0, targets=["all"])
    assert len(every) == 2 * 7 and "lm_head" not in every
    assert all(name.startswith("blocks.") for name in every)

    some = apply_lora(tiny(**LLAMA), rank=2, alpha=2.0, dropout=0.0, targets=["q_proj", "mlp.up_proj"])
    assert some == ["blocks.0.attn.q_proj", "blocks.0.mlp.up_proj", "blocks.1.attn.q_proj", "blocks.1.mlp.up_proj"]

    for target in ["qq_proj", "lm_head", "proj"]:  # whole names only, and never the head
        with pytest.raises(ValueError, match=f"'{target}' matches no linear layer") as err:
            apply_lora(tiny(**LLAMA), rank=2, alpha=2.0, dropout=0.0, targets=[target])
        assert "\n" not in str(err.value) and "q_proj" in str(err.value) and "down_proj" in str(err.value)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        apply_lora(tiny(**LLAMA), rank=0, alpha=2.0, dropout=0.0, targets=["all"])
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(trained_lora(), rank=2, alpha=2.0, dropout=0.0, targets=["all"])


def test_tied_embeddings_stay_tied_and_frozen():
    model = tiny(**LLAMA)
    emb = model.tok_emb.weight.clone()
    apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["all"])
    assert model.lm_head.weight is model.tok_emb.weight and not model.tok_emb.weight.requires_grad
    train(model)
    merge_lora(model)
    assert model.lm_head.weight is model.tok_emb.weight and torch.equal(model.tok_emb.weight, emb)


def test_cached_generation_lora_and_merged_agree():
    model = trained_lora()
    prompt = batch()[:2, :4]
    sampling = SamplingConfig(max_new_tokens=20, temperature=0.0, use_cache=True)  # past the window: cache rebuilt
    lora_tokens = generate(model, prompt, sampling)
    uncached = SamplingConfig(max_new_tokens=20, temperature=0.0, use_cache=False)
    assert torch.equal(generate(model, prompt, uncached), lora_tokens)
    merge_lora(model)
    assert torch.equal(generate(model, prompt, sampling), lora_tokens)


def test_monitor_paths_work_on_a_lora_model():
    model = trained_lora()
    merged = copy.deepcopy(model)
    merge_lora(merged)
    x = batch()[:2]

    seen = []
    for block in model.blocks:
        block.attn.register_forward_hook(lambda m, i, o: seen.append("attn"))
        block.mlp.register_forward_hook(lambda m, i, o: seen.append("mlp"))
    logits, probs = attention_probabilities(model, x)
    assert seen == ["attn", "mlp"] * 2

    merged_logits, merged_probs = attention_probabilities(merged, x)
    torch.testing.assert_close(logits, merged_logits, atol=1e-5, rtol=0)
    for p, q in zip(probs, merged_probs, strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    result = probe_forward(model, x, step=0)  # a pre-hook on down_proj, now a LoRALinear
    assert [p.shape for p in result.mlp_peaks] == [(model.cfg.ffn_dim,)] * 2


def test_adapter_dropout_acts_only_in_train_mode():
    model = tiny(**LLAMA)
    apply_lora(model, rank=4, alpha=8.0, dropout=0.5, targets=["all"])
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B)
    x = batch()
    eval_logits = model.eval()(x)
    assert torch.equal(model(x), eval_logits)
    model.train()
    assert not torch.allclose(model(x), eval_logits)
