"""Mixture of experts: routing, the balancing losses, the dense equivalence, export/import, the router monitor."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

from llmlab.config.errors import ConfigError
from llmlab.config.monitors import HealthMonitorConfig
from llmlab.config.schema import ModelConfig, MoEConfig, TrainerConfig, architecture_differences
from llmlab.data.batch import Batch
from llmlab.data.dataset import TrainBatches, validation_batches
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.interop.hf import hf_family, to_hf
from llmlab.interop.hf_import import load_pretrained_weights, resolve_model_config
from llmlab.interop.hf_tokenizer import save_hf_tokenizer
from llmlab.model.moe import MoE, load_balancing_loss, route
from llmlab.model.transformer import MLP, Transformer
from llmlab.monitors.base import AlertLog, MonitorContext, StepInfo
from llmlab.monitors.health import HealthMonitor
from llmlab.monitors.router import RouterMonitor
from llmlab.monitors.worker import BackgroundWorker
from llmlab.runner import Run
from llmlab.train.checkpointer import Checkpointer, resume_point
from llmlab.train.distributed import SINGLE
from llmlab.train.objectives import NextTokenObjective
from llmlab.train.trainer import Trainer
from llmlab.weights import model_tensors, parameter_count

VOCAB = 60


def moe_cfg(**moe) -> ModelConfig:
    return ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, context_length=16, vocab_size=VOCAB,
                       moe=MoEConfig(**{"experts": 4, "top_k": 2, "d_ff": 48, **moe}))


def one_moe(d_model: int = 8, **moe) -> MoE:
    cfg = ModelConfig(n_layers=1, d_model=d_model, n_heads=2, vocab_size=VOCAB,
                      moe=MoEConfig(**{"experts": 4, "top_k": 1, "d_ff": 16, **moe}))
    torch.manual_seed(0)
    return MoE(cfg, MLP)


# ---- routing --------------------------------------------------------------------------------------------
def test_hand_set_router_weights_send_each_token_to_its_expert():
    moe = one_moe()
    with torch.no_grad():
        moe.router.weight.copy_(10 * torch.eye(4, 8))  # feature j votes for expert j
    wanted = torch.tensor([2, 0, 3, 3, 1, 2])
    x = torch.nn.functional.one_hot(wanted, 8).float() + 0.01 * torch.randn(6, 8)
    _, chosen, weights = route(moe.router(x), top_k=1, norm_topk=True)
    assert chosen[:, 0].tolist() == wanted.tolist() and torch.equal(weights, torch.ones(6, 1))
    y = moe.eval()(x[None])[0]
    for n, e in enumerate(wanted.tolist()):  # each token is its expert's output, weighted 1
        torch.testing.assert_close(y[n], moe.experts[e](x[n]), rtol=0, atol=1e-6)
    # top 2: a second, weaker vote picks the runner-up
    second = torch.tensor([1, 3, 0, 2, 0, 0])
    x2 = x + 0.5 * torch.nn.functional.one_hot(second, 8).float()
    _, chosen, _ = route(moe.router(x2), top_k=2, norm_topk=True)
    assert chosen.tolist() == torch.stack([wanted, second], 1).tolist()


@pytest.mark.parametrize("norm_topk", [True, False])
def test_top_k_weights_are_what_mixtral_and_qwen2_moe_compute(norm_topk):
    torch.manual_seed(0)
    x, weight = torch.randn(10, 16), torch.randn(6, 16)
    probs, chosen, ours = route(x @ weight.T, top_k=2, norm_topk=norm_topk)
    sizes = dict(hidden_size=16, num_experts_per_tok=2)
    family = (MixtralTopKRouter(MixtralConfig(**sizes, num_local_experts=6)) if norm_topk
              else Qwen2MoeTopKRouter(Qwen2MoeConfig(**sizes, num_experts=6, norm_topk_prob=False)))
    with torch.no_grad():
        family.weight.copy_(weight)
        _, theirs, their_chosen = family(x)
    assert torch.equal(chosen, their_chosen)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-6)
    sums = ours.sum(-1)
    if norm_topk:
        torch.testing.assert_close(sums, torch.ones(10))
    else:  # the raw softmax probabilities of the two chosen: less than 1
        assert (sums < 1).all() and torch.equal(ours, probs.gather(1, chosen))


def test_the_load_balancing_loss_is_its_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    chosen = torch.tensor([[0], [0], [2], [1]])  # f = (2/4, 1/4, 1/4)
    P = probs.mean(0)  # (0.475, 0.25, 0.275)
    expected = 3 * (0.5 * P[0] + 0.25 * P[1] + 0.25 * P[2])
    assert load_balancing_loss(probs, chosen).item() == pytest.approx(expected.item())
    uniform = torch.full((6, 3), 1 / 3)
    assert load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [0], [1], [2]])).item() == pytest.approx(1.0)


def test_dropless_routing_loses_no_token_even_when_all_go_to_one_expert():
    moe = one_moe(top_k=2)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = moe.router.weight[1, 1] = 5.0  # every token: experts 0 and 1
    x = torch.randn(1, 40, 8)
    x[..., :2] = 1.0
    y = moe.eval()(x)[0]
    probs, chosen, weights = route(moe.router(x[0]), 2, True)
    assert (chosen.sort(-1).values == torch.tensor([0, 1])).all()
    expected = torch.stack([sum(w * moe.experts[e](x[0, n]) for e, w in zip(chosen[n].tolist(), weights[n],
                                                                                 strict=True)) for n in range(40)])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)  # all 40 tokens through both experts


def test_grouped_experts_equal_a_loop_over_tokens():
    moe = one_moe(top_k=2, shared_experts=1)
    x = torch.randn(3, 7, 8)
    y = moe.eval()(x).flatten(0, 1)
    flat = x.flatten(0, 1)
    _, chosen, weights = route(moe.router(flat), 2, True)
    for n in range(len(flat)):
        routed = sum(w * moe.experts[e](flat[n]) for e, w in zip(chosen[n].tolist(), weights[n], strict=True))
        shared = torch.sigmoid(moe.shared_gate(flat[n])) * moe.shared(flat[n])
        torch.testing.assert_close(y[n], routed + shared, rtol=0, atol=1e-6)


def test_one_expert_top_1_is_the_dense_model_with_the_same_weights():
    dense_cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=VOCAB)
    torch.manual_seed(0)
    dense = Transformer(dense_cfg).eval()
    moe = Transformer(dataclasses.replace(dense_cfg, moe=MoEConfig(experts=1, top_k=1))).eval()
    state = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
    for i in range(2):
        state[f"blocks.{i}.mlp.router.weight"] = torch.randn(1, 32)
    moe.load_state_dict(state, strict=True)
    ids = torch.randint(0, VOCAB, (3, 16))
    with torch.no_grad():
        assert torch.equal(moe(ids), dense(ids))


# ---- training terms ---------------------------------------------------------------------------------------
def test_the_auxiliary_loss_reaches_the_training_loss_but_not_the_validation_loss():
    torch.manual_seed(0)
    model = Transformer(moe_cfg(aux_loss_coef=0.1, z_loss_coef=0.01))
    ids = torch.randint(0, VOCAB, (2, 17))
    batch = Batch(ids[:, :-1], ids[:, 1:])
    record: dict = {}
    loss = NextTokenObjective().loss(model, batch, record)
    ce = torch.nn.functional.cross_entropy(model(batch.input_ids).flatten(0, 1), batch.targets.flatten())
    layers = [moe for _, moe in model.moe_layers()]
    extra = sum(0.1 * m.last.aux_loss + 0.01 * m.last.z_loss for m in layers)
    assert loss.item() == pytest.approx((ce + extra).item(), rel=1e-6)
    assert record["train/aux_loss"][0].item() == pytest.approx(extra.item(), rel=1e-6)
    loss.backward()
    assert layers[0].router.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert NextTokenObjective().loss(model, batch).item() == pytest.approx(ce.item(), rel=1e-6)


def test_bias_balancing_moves_the_bias_against_the_load_and_spreads_it():
    moe = one_moe(top_k=1, balance="bias", bias_rate=0.05)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 1.0  # expert 0 wins every token by a small margin
    x = torch.ones(1, 32, 8)
    moe.train()(x)
    assert moe.last.chosen.flatten().tolist() == [0] * 32
    assert moe.router_bias.tolist() == pytest.approx([-0.05, 0.05, 0.05, 0.05])
    for _ in range(20):
        moe(x + 0.3 * torch.randn(1, 32, 8))
    assert len(set(moe.last.chosen.flatten().tolist())) > 1  # the bias now sends tokens elsewhere too
    assert "router_bias" in moe.state_dict()  # state that resumes and is checkpointed


def test_parameter_counts_total_and_active_and_the_flops_count_active_ones():
    cfg = moe_cfg(shared_experts=1, every=2)
    model = Transformer(cfg)
    expert = sum(p.numel() for p in model.blocks[1].mlp.experts[0].parameters())
    assert model.num_params() - model.active_params() == 2 * expert  # 4 experts, top 2, one MoE block
    assert model.flops_per_token() == Transformer(cfg).flops_per_token()
    dense = Transformer(dataclasses.replace(cfg, moe=MoEConfig()))
    assert dense.active_params() == dense.num_params()
    # the meta-device counts and expected tensors know a MoE block after a dense one
    assert parameter_count(cfg) == model.num_params() + sum(b.numel() for b in model.buffers())
    assert sorted(n for e in model_tensors(cfg) for n in e.names) == sorted(model.state_dict())


@pytest.mark.parametrize("n_layers,every", [(4, 1), (5, 3), (4, 4), (2, 2)])
def test_the_tensors_and_counts_computed_from_a_moe_config_are_the_models(n_layers, every):
    cfg = dataclasses.replace(moe_cfg(shared_experts=1, balance="bias"), n_layers=n_layers)
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, every=every))
    model = Transformer(cfg)
    state = model.state_dict()
    expected = list(model_tensors(cfg))
    assert sorted(n for e in expected for n in e.names) == sorted(state)
    assert all(tuple(state[e.names[0]].shape) == e.shape for e in expected)
    assert parameter_count(cfg) == model.num_params() + sum(b.numel() for b in model.buffers())


def test_moe_options_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"model.moe.top_k=5 must be in \[1, model.moe.experts=4\]"):
        MoEConfig(experts=4, top_k=5)
    with pytest.raises(ConfigError, match="model.moe.balance"):
        MoEConfig(experts=4, balance="sometimes")
    with pytest.raises(ConfigError, match="model.moe.every"):
        MoEConfig(experts=4, every=0)
    with pytest.raises(ConfigError, match=r"model.moe.experts must be in \[0, 1024\]"):  # a forged manifest's
        MoEConfig(experts=10**9)
    saved = dataclasses.asdict(moe_cfg())
    assert architecture_differences(saved, moe_cfg(aux_loss_coef=0.5)) == []  # a loss weight is not architecture
    assert [d[0] for d in architecture_differences(saved, moe_cfg(experts=8))] == ["moe"]


# ---- export and import ------------------------------------------------------------------------------------
@pytest.mark.parametrize("moe,family", [({}, "mixtral"),
                                        ({"shared_experts": 2, "every": 2, "norm_topk": False}, "qwen2_moe")])
def test_export_loads_in_transformers_and_imports_back_with_logits_parity(tmp_path, moe, family):
    cfg = dataclasses.replace(moe_cfg(**moe), n_layers=4)
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))  # routers with opinions
    assert hf_family(cfg) == family
    to_hf(ours).save_pretrained(tmp_path)
    save_hf_tokenizer(ByteTokenizer(), tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[family]
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        logits = ours(ids)
        assert (theirs(ids).logits - logits).abs().max().item() < 1e-5
    imported_cfg = resolve_model_config(ModelConfig(name="hf", path=str(tmp_path), context_length=16))
    assert imported_cfg.moe.experts == 4 and imported_cfg.moe.every == cfg.moe.every
    imported = Transformer.uninitialized(imported_cfg)
    load_pretrained_weights(imported, imported_cfg)
    with torch.no_grad():
        assert (imported.eval()(ids) - logits).abs().max().item() < 1e-5


def test_a_model_directory_missing_an_expert_is_one_line(tmp_path):
    torch.manual_seed(0)
    to_hf(Transformer(moe_cfg())).save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"experts\.3\.w2"):
        resolve_model_config(ModelConfig(name="hf", path=str(tmp_path), context_length=16))


@pytest.mark.parametrize("fields,option", [
    ({"balance": "bias"}, "model.moe.balance=bias"), ({"every": 2}, "model.moe.every=2"),
    ({"norm_topk": False}, "model.moe.norm_topk=false")])
def test_combinations_transformers_cannot_hold_are_refused_naming_the_option(fields, option):
    with pytest.raises(ConfigError, match=option) as err:
        hf_family(moe_cfg(**fields))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="GPT-2-style mixture of experts"):
        hf_family(dataclasses.replace(moe_cfg(), positions="learned", norm="layernorm", mlp="gelu"))


# ---- the router monitor and the health alerts ---------------------------------------------------------------
def test_the_router_monitor_in_a_plain_loop_writes_scalars_history_and_the_load_heatmap(tmp_path):
    torch.manual_seed(0)
    model = Transformer(moe_cfg())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with RouterMonitor(save_dir=tmp_path / "router", every=2, tensorboard=True) as router:
        for step in range(1, 7):
            ids = torch.randint(0, VOCAB, (4, 16))
            loss = NextTokenObjective().loss(model, Batch(ids[:, :-1], ids[:, 1:]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            router.log(model, ids, step, loss=loss.item())
    rows = [json.loads(line) for line in (tmp_path / "router/history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and list(rows[0]["layers"]) == ["layer0", "layer1"]
    layer = rows[-1]["layers"]["layer1"]
    assert sum(layer["load"]) == pytest.approx(1.0) and len(layer["load"]) == 4
    assert layer["cv"] == pytest.approx(float(np.std(layer["load"]) / np.mean(layer["load"])), rel=1e-5)
    assert 0 < layer["entropy"] <= np.log(4) + 1e-6 and 0.25 <= layer["top1_prob"] <= 1
    assert 0 <= layer["dropped_at_capacity"] < 1 and layer["aux_loss"] >= 1 - 1e-6
    assert (tmp_path / "router/plots/router_load.png").stat().st_size > 0
    events = EventAccumulator(str(tmp_path / "router/tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert {f"router/layer1/{k}" for k in ("cv", "entropy", "top1_prob", "dropped_at_capacity", "aux_loss",
                                           "z_loss")} <= set(events.Tags()["scalars"])


def test_health_alerts_a_dead_expert_and_router_collapse(tmp_path):
    torch.manual_seed(0)
    model = Transformer(moe_cfg(experts=8, balance="bias", bias_rate=0.0))
    with torch.no_grad():
        for _, moe in model.moe_layers():
            moe.router_bias[:2] = 1.0  # experts 0 and 1 are chosen for every token; 2..7 get nothing
    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, every=1, dead_expert_captures=3))
    ctx = MonitorContext(model=model, out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"), probe=torch.randint(0, VOCAB, (2, 16)))
    monitor.on_train_start(ctx, 0)
    model.train()
    for step in range(1, 4):
        model(torch.randint(0, VOCAB, (2, 16)))
        monitor.on_step_end(StepInfo(step, 2.0, 1.0, 1e-3, step))
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    dead = {a["subject"] for a in alerts if a["kind"] == "dead_expert"}
    assert dead == {f"layer{layer}.expert{e}" for layer in (0, 1) for e in range(2, 8)}
    assert all(a["step"] == 3 for a in alerts if a["kind"] == "dead_expert")  # after 3 captures running
    assert {a["subject"] for a in alerts if a["kind"] == "router_collapse"} == {"layer0", "layer1"}


# ---- whole runs ---------------------------------------------------------------------------------------------
def trainer_parts(balance: str, init_seed: int = 0, data_seed: int = 0):
    torch.manual_seed(init_seed)
    model = Transformer(dataclasses.replace(moe_cfg(balance=balance, bias_rate=0.01, shared_experts=1),
                                            context_length=8, vocab_size=16))
    tokens = np.random.default_rng(0).integers(0, 16, 2000).astype(np.uint16)
    return model, TrainBatches(tokens, 4, 8, seed=data_seed), validation_batches(tokens, 4, 8, 2)


@pytest.mark.slow
@pytest.mark.parametrize("balance", ["aux_loss", "bias"])
def test_a_resumed_moe_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path, balance):
    config = TrainerConfig(max_steps=6, batch_size=4, warmup_steps=1, log_every=1, eval_every=3, checkpoint_every=3,
                           progress=False)
    model, batches, val = trainer_parts(balance)
    whole = Trainer(model, NextTokenObjective(), batches, val, config)
    whole.fit()
    model, batches, val = trainer_parts(balance)
    checkpointer = Checkpointer(tmp_path / "checkpoints", SINGLE, "ddp", keep=0, meta={"model": {}})
    Trainer(model, NextTokenObjective(), batches, val, config, checkpointer=checkpointer).fit(until=3)
    found = resume_point(tmp_path / "checkpoints", "auto")
    model, batches, val = trainer_parts(balance, init_seed=1, data_seed=1)
    checkpointer.load_weights(found, model)
    second = Trainer(model, NextTokenObjective(), batches, val, config, checkpointer=checkpointer)
    second.resume(found)
    second.fit()
    ours, theirs = second.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    if balance == "bias":
        assert theirs["blocks.0.mlp.router_bias"].abs().sum() > 0


@pytest.mark.slow
def test_a_moe_run_reports_active_parameters_and_watches_its_router(tmp_path):
    run = Run(run_config(tmp_path, ["model.moe.experts=4", "model.moe.top_k=2", "monitors=light",
                                    "monitors.router.every=2", "monitors.health.every=2"]))
    result = run.execute()
    assert result.status == "completed"
    out = tmp_path / "run"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["active_params"] < summary["params"]
    assert (out / "monitors/router/history.jsonl").is_file() and (out / "plots/router_load.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/aux_loss" in r for r in rows) and not any("val/train/aux_loss" in r for r in rows)
