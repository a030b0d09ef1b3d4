"""The small-model architecture options the speedrun community measured (QK-norm, ReLU squared, zero-initialised
output projections, logit soft-capping, value embeddings): each off by default, each doing what it says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, TrainerConfig
from llmlab.interop.hf import hf_family
from llmlab.model.transformer import MLP, Transformer
from llmlab.train.optim import split_parameters

SMALL = dict(vocab_size=17, n_layers=2, d_model=32, n_heads=4, context_length=12)


def model(**options) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**SMALL, **options))


def tokens() -> torch.Tensor:
    return torch.randint(0, 17, (3, 12), generator=torch.Generator().manual_seed(1))


def test_every_option_is_off_by_default_and_leaves_the_model_as_it_was():
    cfg = ModelConfig()
    assert (cfg.qk_norm, cfg.zero_init_proj, cfg.logit_softcap, cfg.value_embeddings) == (False, False, 0.0, False)
    assert torch.equal(model()(tokens()), model(qk_norm=False, logit_softcap=0.0)(tokens()))


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    normed, plain = model(qk_norm=True), model()
    x = tokens()
    before_n, before_p = normed(x), plain(x)
    with torch.no_grad():
        for m in (normed, plain):
            for block in m.blocks:
                block.attn.q_proj.weight.mul_(20.0)
                block.attn.k_proj.weight.mul_(10.0)
    assert torch.allclose(normed(x), before_n, atol=1e-5)
    assert (plain(x) - before_p).abs().max() > 1e-2


def test_relu2_is_the_square_of_relu_with_one_up_projection():
    cfg = ModelConfig(**SMALL, mlp="relu2")
    mlp = MLP(cfg)
    assert not hasattr(mlp, "gate_proj") and mlp.up_proj.out_features == 4 * cfg.d_model
    x = torch.randn(2, 5, cfg.d_model)
    assert torch.allclose(mlp(x), mlp.down_proj(F.relu(mlp.up_proj(x)) ** 2))


def test_zero_init_projections_start_every_block_as_the_identity():
    m = model(zero_init_proj=True)
    assert all(not b.attn.o_proj.weight.any() and not b.mlp.down_proj.weight.any() for b in m.blocks)
    x = tokens()
    assert torch.allclose(m(x), m.lm_head(m.final_norm(m.tok_emb(x))))
    assert model().blocks[0].attn.o_proj.weight.any()


def test_logit_softcap_bounds_the_logits_and_is_tanh_of_the_uncapped_ones():
    capped, free = model(logit_softcap=0.5), model()
    x = tokens()
    assert capped(x).abs().max() < 0.5
    assert torch.allclose(capped(x), 0.5 * torch.tanh(free(x) / 0.5), atol=1e-6)
    with pytest.raises(ConfigError, match="model.logit_softcap"):
        ModelConfig(**SMALL, logit_softcap=-1.0)


def test_value_embeddings_reach_the_output_and_train_with_adamw():
    m, x = model(value_embeddings=True), tokens()
    before = m(x)
    with torch.no_grad():
        m.value_embs[1].weight.add_(1.0)
    assert not torch.allclose(m(x), before)
    muon, adamw = split_parameters(m)
    assert any("value_embs" in n for n, _ in adamw) and not any("value_embs" in n for n, _ in muon)
    assert TrainerConfig(optimizer="muon")  # the pair is legal


def test_the_options_have_no_transformers_equivalent_and_export_refuses_them():
    for options in (dict(qk_norm=True), dict(mlp="relu2"), dict(logit_softcap=30.0), dict(value_embeddings=True)):
        with pytest.raises(ConfigError, match="no such option"):
            hf_family(ModelConfig(**SMALL, **options))
    assert hf_family(ModelConfig(**SMALL, zero_init_proj=True)) == "llama"  # only the init differs
