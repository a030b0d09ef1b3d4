"""The monitors in a plain PyTorch loop: a transformers Llama model built offline, a plain nn.Module, and an
llmlab model whose statistics must equal what llmlab's own trainer records on the same model and batch."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import LlamaConfig, LlamaForCausalLM

from llmlab.monitors import AttentionMonitor, DistributionMonitor
from llmlab.runner import Run
from llmlab.train.optim import build_optimizer
from llmlab.train.schedule import lr_at


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_a_transformers_llama_in_a_plain_loop(tmp_path):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with AttentionMonitor(save_dir=tmp_path / "attn", every=5, layers=[0, -1]) as attn, \
         DistributionMonitor(save_dir=tmp_path / "dist", every=5, tensorboard=True) as dist:
        for step in range(11):
            batch = {"input_ids": torch.randint(0, 100, (4, 24))}
            loss = model(**batch, labels=batch["input_ids"]).loss
            loss.backward()
            dist.after_backward(model, step)
            optimizer.step()
            optimizer.zero_grad()
            attn.log(model, batch, step, loss=loss.item())
            dist.log(model, batch, step, loss=loss.item())
    assert model.config._attn_implementation == "sdpa"  # eager only for the probes
    for d in ("attn", "dist"):
        assert sorted(p.name for p in (tmp_path / d).glob("step_*")) == ["step_0", "step_10", "step_5"]
    stats = json.loads((tmp_path / "attn/step_5/statistics.json").read_text())
    assert list(stats["layers"]) == ["layer0", "layer1"] and stats["probe_shape"] == [4, 24]
    assert 0 < stats["layers"]["layer1"]["mean"]["entropy"] <= torch.log(torch.tensor(24.0)).item()
    record = json.loads((tmp_path / "dist/step_5/layer_statistics.json").read_text())
    assert {"model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1"} <= set(record["activations"])
    assert "model.layers.1.mlp.down_proj.weight" in record["gradients"]
    assert record["weights"]["model.layers.0.self_attn.q_proj.weight"]["update_ratio"] > 0
    events = EventAccumulator(str(tmp_path / "dist/tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert "gradients/model.layers.0.mlp.up_proj.weight/l2_norm" in events.Tags()["scalars"]
    assert "activations/model.layers.1/std" in events.Tags()["scalars"]
    assert "weights/model.embed_tokens.weight" in events.Tags()["histograms"]


def test_attention_maps_match_the_models_own_eager_attention(tmp_path):
    model = tiny_llama().eval()
    ids = torch.randint(0, 100, (2, 16))
    with AttentionMonitor(save_dir=tmp_path, every=1, save_raw=True, images=False) as attn:
        attn.log(model, ids, 1)
    saved = np.load(tmp_path / "step_1/attention.npz")
    model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(ids, output_attentions=True).attentions
    assert torch.allclose(torch.from_numpy(saved["layer1"]), expected[1][0], atol=1e-6)


def test_a_plain_module_is_watched_by_name(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with DistributionMonitor(save_dir=tmp_path, every=2, activation_filter=lambda name, m: isinstance(m, torch.nn.ReLU)
                             ) as dist:
        for step in range(5):
            x = torch.randn(32, 8)
            loss = net(x).pow(2).mean()
            loss.backward()
            dist.after_backward(net, step)
            optimizer.step()
            optimizer.zero_grad()
            dist.log(net, x, step, loss=loss.item())
    record = json.loads((tmp_path / "step_2/layer_statistics.json").read_text())
    assert set(record["weights"]) == set(record["gradients"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(record["activations"]) == {"1"} and record["activations"]["1"]["min"] >= 0  # after the ReLU
    # as in the trainer, a monitor that fails is switched off and says why; the loop goes on
    bad = DistributionMonitor(save_dir=tmp_path / "x", every=1, layers=[0])
    bad.log(net, x, 1)
    assert "no decoder layers" in bad.close()["disabled"]["distribution"]


@pytest.mark.slow
def test_the_same_statistics_as_inside_llmlabs_trainer(tmp_path):
    """Step 1 of a run, captured by the trainer's monitor and again by hand through the door."""
    cfg = run_config(tmp_path, ["monitors=full", "monitors.distribution.every=0", "monitors.distribution.steps=[1]",
                                "monitors.distribution.plots=false", "trainer.max_steps=1",
                                "trainer.optimizer=adamw"])  # one lr for every group, as the loop below sets it
    run = Run(cfg)
    trainer = run.setup()
    start, data = copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.train_batches.state_dict())
    run.finish(trainer, trainer.fit())
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(start)
    trainer.train_batches.load_state_dict(data)
    inputs, targets = trainer.train_batches.next()
    optimizer = build_optimizer(model, cfg.trainer, torch.device("cpu"))
    trained = cfg.trainer
    for group in optimizer.param_groups:
        group["lr"] = lr_at(0, trained.lr, trained.warmup_steps, trained.max_steps, trained.floor_ratio)
    with DistributionMonitor(save_dir=tmp_path / "door", every=0, steps=[1]) as dist:
        dist.log(model, None, 0)  # the step before: hooks go on for step 1's forward
        model.train()
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        dist.after_backward(model, 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        dist.log(model, (inputs, targets), 1, loss=loss.item())
    ours = json.loads((tmp_path / "door/step_1/layer_statistics.json").read_text())
    theirs = json.loads((tmp_path / "run/monitors/distribution/step_1/layer_statistics.json").read_text())
    for kind in ("weights", "gradients", "activations"):
        assert ours[kind].keys() == theirs[kind].keys()
        for name, stats in theirs[kind].items():
            for stat, value in stats.items():
                assert ours[kind][name][stat] == pytest.approx(value, rel=1e-5, abs=1e-7), (kind, name, stat)


def test_a_transformers_gpt2_has_its_layers_and_attention_found(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    ids = torch.randint(0, 100, (2, 16))
    with AttentionMonitor(save_dir=tmp_path / "attn", every=1, save_raw=True) as attn, \
         DistributionMonitor(save_dir=tmp_path / "dist", every=1, layers=[-1]) as dist:
        dist.log(model, ids, 0)  # hooks on for step 1
        model(input_ids=ids, labels=ids).loss.backward()
        dist.after_backward(model, 1)
        attn.log(model, ids, 1)
        dist.log(model, ids, 1)
    record = json.loads((tmp_path / "dist/step_1/layer_statistics.json").read_text())
    assert set(record["activations"]) == {"transformer.h.1.attn", "transformer.h.1.mlp", "transformer.h.1"}
    assert all(name.startswith("transformer.h.1.") for name in record["gradients"])
    maps = np.load(tmp_path / "attn/step_1/attention.npz")["layer1"]  # (heads, T, T): causal rows that sum to 1
    assert maps.shape == (4, 16, 16) and np.abs(maps.sum(-1) - 1).max() < 1e-5 and np.abs(np.triu(maps, 1)).max() == 0


def test_a_batch_without_token_ids_is_named(tmp_path):
    with pytest.raises(TypeError, match="a batch must be token ids, a dict with input_ids .*; got str"):
        AttentionMonitor(save_dir=tmp_path, every=1).log(tiny_llama(), "not a batch", 1)
