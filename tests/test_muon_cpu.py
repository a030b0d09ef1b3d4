"""Muon's cheaper Newton-Schulz (llmlab/train/muon.py): torch's own arithmetic by default, float32 and batched by
shape as options that give the same update as one matrix at a time, and a state dict either can load."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, MuonConfig, TrainerConfig
from llmlab.model.transformer import Transformer
from llmlab.train.muon import Muon, ns_dtype_for, orthogonalise
from llmlab.train.optim import build_optimizer

CPU = torch.device("cpu")
COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def stepped(ns_dtype: str, batched: bool, ns_steps: int = 5, steps: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=30, n_layers=2, d_model=32, n_heads=4, context_length=8))
    cfg = TrainerConfig(optimizer="muon", muon=MuonConfig(ns_dtype=ns_dtype, ns_batched=batched, ns_steps=ns_steps))
    optimizer = build_optimizer(model, cfg, CPU)
    for _ in range(steps):
        x = torch.randint(0, 30, (4, 8))
        model(x).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_the_default_is_torch_muon_bit_for_bit():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6, 10)), torch.nn.Parameter(torch.randn(10, 6))
    twins = [torch.nn.Parameter(p.detach().clone()) for p in (a, b)]
    ours, torchs = Muon([a, b], lr=0.1), torch.optim.Muon(twins, lr=0.1)
    for _ in range(3):
        grads = [torch.randn(6, 10), torch.randn(10, 6)]
        for p, q, g in zip((a, b), twins, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        torchs.step()
    assert all(torch.equal(p, q) for p, q in zip((a, b), twins, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalise_matches_torch_iteration_on_each_matrix_of_a_batch(dtype):
    torch.manual_seed(1)
    wide = torch.randn(3, 8, 20)
    batch = orthogonalise(wide, COEFFICIENTS, 5, 1e-7, dtype)
    for i in range(3):
        alone = orthogonalise(wide[i:i + 1], COEFFICIENTS, 5, 1e-7, dtype)[0]
        assert torch.equal(batch[i], alone) or torch.allclose(batch[i].float(), alone.float(), atol=1e-2)
    # float32 against torch's bfloat16 iteration: the same map, to bfloat16's precision
    if dtype == torch.float32:
        reference = _zeropower_via_newtonschulz(wide[0], COEFFICIENTS, 5, 1e-7).float()
        assert (batch[0] - reference).abs().max() < 0.05
        singular = torch.linalg.svdvals(batch[0])
        assert singular.min() > 0.5 and singular.max() < 1.3  # near-orthogonal rows, as Muon wants


def test_float32_and_batching_keep_the_update_and_fewer_iterations_change_it():
    one_by_one, batched = stepped("fp32", False), stepped("fp32", True)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(one_by_one, batched, strict=True))
    bf16 = stepped("bf16", False)
    assert max((p - q).abs().max() for p, q in zip(one_by_one, bf16, strict=True)) < 5e-3
    three = stepped("fp32", True, ns_steps=3)
    assert max((p - q).abs().max() for p, q in zip(one_by_one, three, strict=True)) > 1e-5


def test_state_dict_is_torch_format_whatever_the_setting():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 6))
    p.grad = torch.randn(4, 6)
    ours = Muon([p], lr=0.1, ns_dtype=torch.float32, batched=True)
    ours.step()
    theirs = torch.optim.Muon([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs.state[theirs.param_groups[0]["params"][0]]["momentum_buffer"],
                       ours.state[p]["momentum_buffer"])


def test_auto_picks_float32_off_cuda_and_a_wrong_dtype_is_one_line():
    assert ns_dtype_for("auto", CPU) == torch.float32
    assert ns_dtype_for("auto", torch.device("cuda")) == torch.bfloat16
    assert ns_dtype_for("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="trainer.muon.ns_dtype"):
        MuonConfig(ns_dtype="fp16")


def test_batching_in_bfloat16_gives_torch_muon_numbers():
    torch.manual_seed(0)
    shapes = [(16, 16), (16, 16), (40, 16), (16, 40)]
    ours_p = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
    torch_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    ours, theirs = Muon(ours_p, lr=0.01, batched=True), torch.optim.Muon(torch_p, lr=0.01)
    for _ in range(3):
        for p, q in zip(ours_p, torch_p, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    assert all(torch.allclose(p, q, atol=1e-6, rtol=0) for p, q in zip(ours_p, torch_p, strict=True))
    assert MuonConfig().ns_batched and MuonConfig().ns_dtype == "bf16"
