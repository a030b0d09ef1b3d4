"""The optimizers and schedules: Muon's share of the parameters, its step against the formula, the learning rate
of every schedule at chosen steps, and the settings that are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from conftest import compose_config, run_config
from safetensors.torch import load_file

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, MoEConfig, MuonConfig, TrainerConfig, wsd_decay_steps
from llmlab.model.lora import apply_lora
from llmlab.model.transformer import Transformer
from llmlab.runner import Run
from llmlab.store import to_dataclass
from llmlab.train.optim import MuonWithAdamW, build_optimizer, peak_lrs, split_parameters
from llmlab.train.schedule import lr_at, scheduled_lr

CPU = torch.device("cpu")
MUON = TrainerConfig(optimizer="muon", muon=MuonConfig(lr=0.05))


def grouped(optimizer) -> list[list[torch.Tensor]]:
    return [group["params"] for group in optimizer.param_groups]


@pytest.mark.parametrize("model_cfg", [
    ModelConfig(vocab_size=40, n_layers=2),  # Llama style: tied head, RMSNorm, no biases
    ModelConfig(vocab_size=40, n_layers=2, positions="learned", norm="layernorm", mlp="gelu", bias=True,
                tie_embeddings=False),  # GPT-2 style with biases, learned positions and an untied head
    ModelConfig(vocab_size=40, n_layers=2, moe=MoEConfig(experts=4, shared_experts=1)),
], ids=["llama", "gpt2_untied", "moe"])
def test_every_parameter_is_in_exactly_one_group_and_muon_has_the_blocks_matrices(model_cfg):
    model = Transformer(model_cfg)
    optimizer = build_optimizer(model, MUON, CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    ids = [id(p) for group in grouped(optimizer) for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each once, none missing
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for group in grouped(optimizer.parts["muon"]) for p in group}
    expected = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2
                and ".router." not in n and ".shared_gate." not in n}
    assert muon == expected
    assert any(".experts.0.up_proj" in n for n in muon) or not model_cfg.moe.experts  # experts: 2-D each, Muon's
    adamw = set(names.values()) - muon
    assert "tok_emb.weight" in adamw and all(p.dim() == 2 for n, p in model.named_parameters() if n in muon)
    if not model_cfg.tie_embeddings:
        assert "lm_head.weight" in adamw
    if model_cfg.moe.experts:
        assert {"blocks.0.mlp.router.weight", "blocks.0.mlp.shared_gate.weight"} <= adamw
    assert peak_lrs(optimizer, MUON) == [0.05] * len(optimizer.parts["muon"].param_groups) + [MUON.lr] * 2


def test_lora_adapters_go_to_adamw_and_leave_muon_nothing():
    model = Transformer(ModelConfig(vocab_size=40, n_layers=1))
    apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["all"])
    muon, adamw = split_parameters(model)
    assert muon == [] and adamw and all("lora_" in n for n, _ in adamw)
    with pytest.raises(ConfigError, match="no trainable matrix in the blocks for Muon"):
        build_optimizer(model, MUON, CPU)


class Toy(nn.Module):
    """One hand-made matrix in a block (Muon's) and an embedding (AdamW's)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.tok_emb = nn.Embedding(3, 2)
        self.blocks = nn.ModuleList([nn.Linear(weight.shape[1], weight.shape[0], bias=False)])
        with torch.no_grad():
            self.blocks[0].weight.copy_(weight)


def newton_schulz(update: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration X <- aX + (bG + cG^2)X with G = XX^T, as torch.optim.Muon runs it: in
    bfloat16, each line one fused multiply-add (addmm: rounded once, as torch rounds it), on the wide orientation,
    after dividing by the Frobenius norm (which bounds the spectral norm by 1)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.bfloat16()
    tall = update.shape[0] > update.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def test_two_muon_steps_on_a_hand_made_matrix_equal_the_formula():
    weight = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5], [0.1, 0.3, 0.7], [-0.2, 0.4, 1.5]])  # (4, 3): tall
    grads = [torch.tensor([[1.0, 0.0, -2.0], [0.5, 0.5, 0.0], [0.0, -1.0, 1.0], [3.0, 0.2, 0.1]]),
             torch.tensor([[0.0, 1.0, 0.5], [-1.0, 0.0, 2.0], [0.3, 0.3, -0.3], [0.0, -2.0, 1.0]])]
    lr, mu, wd = 0.05, 0.9, 0.1
    cfg = TrainerConfig(optimizer="muon", muon=MuonConfig(lr=lr, momentum=mu, weight_decay=wd))
    model = Toy(weight)
    optimizer = build_optimizer(model, cfg, CPU)
    w, buf = weight.clone(), torch.zeros_like(weight)
    for g in grads:
        model.blocks[0].weight.grad = g.clone()
        optimizer.step()
        buf = mu * buf + (1 - mu) * g  # torch keeps the momentum as a running mean (lerp), not a sum
        nesterov = (1 - mu) * g + mu * buf
        scale = math.sqrt(max(1.0, w.shape[0] / w.shape[1]))  # adjust_lr=original: sqrt(rows / cols) for a tall one
        w = w * (1 - lr * wd) - lr * scale * newton_schulz(nesterov).float()
        torch.testing.assert_close(model.blocks[0].weight.detach(), w, atol=1e-6, rtol=1e-5)
    # the update is near-orthogonal: its singular values lie in the band NS leaves them in, not all equal to 1
    singular = torch.linalg.svdvals(newton_schulz(grads[0]).float())
    assert 0.5 < singular.min() and singular.max() < 1.3


def test_the_composite_state_dict_holds_both_and_refuses_an_adamw_one():
    model = Toy(torch.ones(4, 3))
    optimizer = build_optimizer(model, MUON, CPU)
    model.blocks[0].weight.grad = torch.ones(4, 3)
    model.tok_emb.weight.grad = torch.ones(3, 2)
    optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"][0]["momentum_buffer"].shape == (4, 3)
    fresh = build_optimizer(Toy(torch.ones(4, 3)), MUON, CPU)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.parts["muon"].state_dict()["state"][0]["momentum_buffer"],
                       state["muon"]["state"][0]["momentum_buffer"])
    with pytest.raises(KeyError, match="Muon and AdamW"):
        fresh.load_state_dict(build_optimizer(model, TrainerConfig(optimizer="adamw"), CPU).state_dict())


def test_wsd_holds_the_peak_then_falls_linearly_to_the_floor():
    cfg = TrainerConfig(schedule="wsd", lr=1.0, warmup_steps=10, max_steps=100, decay_fraction=0.2,
                        min_lr_ratio=0.1)
    lrs = {s: scheduled_lr(s, 1.0, cfg) for s in (0, 9, 10, 50, 79, 80, 90, 99, 100, 150)}
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # warmup: (step + 1) / 10
    assert lrs[10] == lrs[50] == lrs[79] == 1.0  # stable until max_steps - 0.2 x 100
    assert lrs[80] == 1.0 and lrs[90] == pytest.approx(1.0 - 0.9 * 10 / 20)  # decay: 20 steps from 1 to 0.1
    assert lrs[99] == pytest.approx(1.0 - 0.9 * 19 / 20)
    assert lrs[100] == lrs[150] == pytest.approx(0.1)
    whole = TrainerConfig(schedule="wsd", lr=1.0, warmup_steps=10, max_steps=100, decay_fraction=0.95)
    assert wsd_decay_steps(whole) == 90 and scheduled_lr(10, 1.0, whole) == 1.0  # the decay never enters warmup
    assert scheduled_lr(55, 1.0, whole) == pytest.approx(1.0 - 0.9 * 45 / 90)
    longer = TrainerConfig(schedule="wsd", lr=1.0, warmup_steps=10, max_steps=200, decay_fraction=0.1)
    assert [scheduled_lr(s, 1.0, longer) for s in range(80)] == [scheduled_lr(s, 1.0, cfg) for s in range(80)]


def test_linear_and_cosine_meet_the_floor_and_an_absolute_min_lr_sets_it():
    linear = TrainerConfig(schedule="linear", lr=2.0, warmup_steps=0, max_steps=10, min_lr=0.2)
    assert [scheduled_lr(s, 2.0, linear) for s in (0, 5, 10)] == pytest.approx([2.0, 1.1, 0.2])
    assert scheduled_lr(5, 0.02, linear) == pytest.approx(0.011)  # Muon's peak falls by the same fraction
    cosine = TrainerConfig(schedule="cosine", lr=2.0, warmup_steps=0, max_steps=10, min_lr=0.2)
    assert scheduled_lr(5, 2.0, cosine) == pytest.approx(1.1) and scheduled_lr(10, 2.0, cosine) == pytest.approx(0.2)
    assert TrainerConfig().floor_ratio == 0.1  # neither set: the old default
    assert lr_at(3, 1.0, 10, 100, 0.1) == pytest.approx(0.4)  # the old positional call still means cosine


@pytest.mark.parametrize("overrides,expected", [
    (["trainer.min_lr=1e-4", "trainer.min_lr_ratio=0.2"],
     "trainer.min_lr=0.0001 and trainer.min_lr_ratio=0.2 disagree (lr x ratio = 0.0006): set one of them"),
    (["trainer.min_lr=1.0"], "trainer.min_lr must be in [0, trainer.lr=0.003], got 1.0"),
    (["trainer.schedule=step"], "trainer.schedule: expected one of cosine|wsd|linear, got 'step'"),
    (["trainer.optimizer=sgd"], "trainer.optimizer: expected one of adamw|muon, got 'sgd'"),
    (["trainer.optimizer=muon", "trainer.strategy=fsdp"],
     "trainer.optimizer=muon does not work with trainer.strategy=fsdp"),
    (["trainer.decay_fraction=0"], "trainer.decay_fraction must be in (0, 1], got 0"),
    (["trainer.muon.momentum=1.0"], "trainer.muon.momentum must be in [0, 1), got 1.0"),
    (["trainer.muon.adjust_lr=none"], "trainer.muon.adjust_lr: expected one of original|match_rms_adamw"),
])
def test_conflicting_or_unknown_optimizer_settings_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        to_dataclass(compose_config(overrides))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_min_lr_and_a_ratio_that_agree_are_accepted_and_min_lr_alone_replaces_the_default_ratio():
    cfg = to_dataclass(compose_config(["trainer.min_lr=6e-4", "trainer.min_lr_ratio=0.2"])).trainer
    assert cfg.floor_ratio == pytest.approx(0.2)
    assert to_dataclass(compose_config(["trainer.min_lr=3e-5"])).trainer.floor_ratio == pytest.approx(0.01)


@pytest.mark.slow
def test_the_update_ratio_sees_the_steps_of_both_optimizers(tmp_path):
    """The distribution monitor compares each weight before and after the step, whichever optimizer moved it: a
    Muon matrix's ratio is the one its checkpoints give, and an AdamW-trained norm gain moves too."""
    overrides = ["trainer.optimizer=muon", "monitors=none", "monitors.distribution.enabled=true",
                 "monitors.distribution.every=0", "monitors.distribution.steps=[4]", "trainer.checkpoint_every=1",
                 "trainer.keep_checkpoints=0", "trainer.max_steps=4"]
    assert Run(run_config(tmp_path, overrides)).execute().status == "completed"
    stats = json.loads((tmp_path / "run/monitors/distribution/step_4/layer_statistics.json").read_text())["weights"]
    before = load_file(tmp_path / "run/checkpoints/step_3/model.safetensors")
    after = load_file(tmp_path / "run/checkpoints/step_4/model.safetensors")
    name = "blocks.0.attn.q_proj.weight"  # Muon's
    expected = ((after[name] - before[name]).norm() / before[name].norm()).item()
    assert stats[name]["update_ratio"] == pytest.approx(expected, rel=1e-5)
    assert stats["blocks.0.attn_norm.weight"]["update_ratio"] > 0  # AdamW's
