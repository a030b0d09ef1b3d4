"""`llmlab.analyze`: one text through a saved model, observed by the training-time distribution/attention monitors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, run_config

from llmlab.analyze import AnalyzeConfig, analyze, summary
from llmlab.config.errors import ConfigError
from llmlab.load import load_trained
from llmlab.runner import Run

TEXT = "Bako and the river"
STATS = {"mean", "std", "p50", "kurtosis", "abs_max", "sparsity"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyze")
    # dropout on: analyze must switch it off, or its statistics would be random
    cfg = run_config(tmp, ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_every=4",
                           "trainer.checkpoint_every=4", "trainer.sample_tokens=4", "data.train_docs=200",
                           "data.val_docs=20", "model.dropout=0.1", "monitors=none"])
    assert Run(cfg).execute().status == "completed"
    return tmp / "run"


def block_names(run_dir, layer: int) -> set[str]:
    model, _, _ = load_trained(run_dir)
    return {n for n, _ in model.named_parameters() if n.startswith(f"blocks.{layer}.")}


def read(out, name="distribution"):
    file = "layer_statistics.json" if name == "distribution" else "statistics.json"
    return json.loads((out / name / "step_4" / file).read_text())


@pytest.mark.slow
def test_plots_write_the_monitor_layout(run_dir, tmp_path):
    out = analyze(AnalyzeConfig(run=str(run_dir), text=TEXT, layers=[0], out=str(tmp_path / "a"), device="cpu",
                                heatmap_max_dim=16, bins=16))
    assert out == tmp_path / "a"
    record = read(out)
    assert record["step"] == 4 and record["lr"] == 0.0 and record["tokens_seen"] == len(TEXT) + 1
    assert np.isfinite(record["loss"]) and record["grad_norm"] > 0
    params = block_names(run_dir, 0)
    assert set(record["weights"]) == set(record["gradients"]) == params
    assert set(record["activations"]) == {"blocks.0", "blocks.0.attn", "blocks.0.mlp"}
    step_dir = out / "distribution" / "step_4"
    for kind in ("weights", "activations", "gradients"):
        for name, stats in record[kind].items():
            assert STATS <= set(stats) and "update_ratio" not in stats  # no optimizer step: no update ratio
            assert (step_dir / kind / f"{name}.png").is_file()
            two_d = kind == "activations" or name.endswith("proj.weight")  # tokens x features, or a matrix
            assert (step_dir / kind / f"{name}_heatmap.png").is_file() == two_d, name
    attention = read(out, "attention")
    assert set(attention["layers"]) == {"layer0"} and attention["probe_shape"] == [1, len(TEXT) + 1]
    assert len(attention["layers"]["layer0"]["heads"]) == 4
    for png in ("layer0_avg.png", "layer0_heads.png", "layer_comparison.png"):
        assert (out / "attention" / "step_4" / png).is_file()
    lines = summary(out)
    assert any(line.startswith("layer 0: residual std") and "attention entropy" in line for line in lines)


@pytest.mark.slow
def test_statistics_match_a_recomputation_without_dropout(run_dir):
    out = analyze(AnalyzeConfig(run=str(run_dir), text=TEXT, layers=[-1], no_plots=True, device="cpu"))
    assert out == run_dir / "analysis"  # the default
    record = read(out)
    model, tokenizer, _ = load_trained(run_dir)  # eval mode: no dropout, as analyze must also be
    captured = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: captured.update(x=o[0].detach().numpy()))
    ids = torch.tensor([[tokenizer.eos_id, *tokenizer.encode(TEXT)]])
    with torch.no_grad():
        logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[0, 1:]).item()
    x = captured["x"].astype(np.float64)
    got = record["activations"]["blocks.1"]
    assert got["std"] == pytest.approx(x.std(), rel=1e-4)
    assert got["mean"] == pytest.approx(x.mean(), rel=1e-4, abs=1e-7)
    assert got["kurtosis"] == pytest.approx(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3, rel=1e-3, abs=1e-4)
    assert record["loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_layer_selection_and_no_gradients_no_plots(run_dir, tmp_path):
    out = analyze(AnalyzeConfig(run=str(run_dir), text=TEXT, layers=[-1], no_plots=True, no_gradients=True,
                                out=str(tmp_path / "b"), device="cpu"))
    record = read(out)
    assert record["gradients"] == {} and np.isnan(record["grad_norm"])
    assert set(record["weights"]) == block_names(run_dir, 1)
    assert set(record["activations"]) == {"blocks.1", "blocks.1.attn", "blocks.1.mlp"}
    assert set(read(out, "attention")["layers"]) == {"layer1"}
    assert not list(out.rglob("*.png")) and not (out / "distribution" / "step_4" / "gradients").exists()


@pytest.mark.slow
def test_bad_inputs_are_config_errors(run_dir):
    with pytest.raises(ConfigError, match="text"):
        analyze(AnalyzeConfig(run=str(run_dir), text="", no_plots=True, device="cpu"))
    with pytest.raises(ConfigError, match="layers"):
        analyze(AnalyzeConfig(run=str(run_dir), text=TEXT, layers=[-3], no_plots=True, device="cpu"))


@pytest.mark.slow
def test_cli_bad_layer_is_one_line_and_exit_2(run_dir, tmp_path):
    result = run_cli("llmlab.analyze", [f"run={run_dir}", f"text={TEXT}", "layers=[0,5]", "device=cpu"],
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: layers")
    assert "Traceback" not in result.stderr and not (run_dir / "analysis" / "attention" / "step_5").exists()
