"""Training end to end in-process: the loss falls, the run leaves its contract, resume is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from llmlab.config.errors import ConfigError
from llmlab.runner import Run
from llmlab.train import trainer as trainer_module
from llmlab.train.schedule import lr_at

CONTRACT_ROW = {"step", "train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu"}
SUMMARY_KEYS = {"status", "steps", "tokens_seen", "params", "val_loss", "val_ppl", "train_loss", "entropy_floor",
                "bigram_loss", "wall_s", "tokens_per_s", "peak_mem_mb"}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 1.0, 10, 100, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))
    assert lrs[100] == lrs[119] == pytest.approx(0.1)


@pytest.mark.slow
def test_short_run_lowers_the_loss_and_leaves_the_contract(tmp_path):
    cfg = run_config(tmp_path, ["trainer.max_steps=40", "trainer.lr=1e-2", "trainer.eval_every=20"])
    result = Run(cfg).execute()
    out = tmp_path / "run"
    assert result.status == "completed"
    logged = rows(out)
    assert all(CONTRACT_ROW <= set(r) for r in logged if "train/loss" in r)
    evals = [r for r in logged if "val/loss" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["val/ppl"] == pytest.approx(math.exp(evals[-1]["val/loss"]))
    assert logged[-1]["train/loss"] < logged[0]["train/loss"] - 0.5
    summary = json.loads((out / "metrics.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["status"] == "completed" and summary["steps"] == 40
    assert summary["entropy_floor"] < summary["val_loss"] < summary["bigram_loss"] + 1.0
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["entropy_floor"] == summary["entropy_floor"] and stats["tokenizer"]["kind"] == "char"
    assert (out / "config_resolved.yaml").read_text().startswith("model:")
    assert "--- step 20" in (out / "samples.txt").read_text()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_40"
    assert {p.name for p in (out / "checkpoints" / "step_40").iterdir()} == {
        "model.safetensors", "state.pt", "manifest.json"}


def interrupt_at(monkeypatch, step: int):
    """Make the loop see a SIGTERM right after optimizer step `step`."""
    original = trainer_module.Trainer.train_step

    def train_step(self, stop):
        out = original(self, stop)
        if self.state.step == step:  # train_step has just taken step `step`
            stop.signal_name = "SIGTERM"
        return out

    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["arch=llama"], ["arch=gpt2"],
                                   ["arch=llama", "trainer.optimizer=muon", "trainer.schedule=wsd"]],
                         ids=["llama", "gpt2", "muon_wsd"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, extra):
    overrides = [*extra, "model.dropout=0.1", "trainer.max_steps=12"]
    full = Run(run_config(tmp_path / "full", overrides)).execute()
    assert full.status == "completed"

    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)  # not a checkpoint step: the signal itself makes it save
        first = Run(run_config(tmp_path / "split", overrides)).execute()
    assert first.status == "interrupted" and first.steps == 5
    assert json.loads((tmp_path / "split/run/metrics.json").read_text())["status"] == "interrupted"
    second = Run(run_config(tmp_path / "split", overrides)).execute()
    assert second.status == "completed" and second.steps == 12

    a = load_file(tmp_path / "full/run/checkpoints/step_12/model.safetensors")
    b = load_file(tmp_path / "split/run/checkpoints/step_12/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = ("perf/tokens_per_s", "perf/mfu", "perf/wall_s")  # timings differ; everything else must be identical
    same = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "full/run")]
    resumed = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "split/run")]
    assert same == resumed


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=2"])).execute()
    with pytest.raises(ConfigError, match="model.n_layers: checkpoint 2 vs config 3"):
        Run(run_config(tmp_path, ["trainer.max_steps=4", "model.n_layers=3"])).execute()
