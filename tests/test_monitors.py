"""Monitors: statistics are right, files and TensorBoard tags appear, and training never notices them."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llmlab.config.monitors import HealthMonitorConfig
from llmlab.config.schema import ModelConfig
from llmlab.model.transformer import Transformer, attention_probabilities
from llmlab.monitors.attention import HEAD_STATS, attention_stats
from llmlab.monitors.base import AlertLog, Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.health import HealthMonitor
from llmlab.monitors.stats import tensor_histograms, tensor_stats
from llmlab.monitors.worker import BackgroundWorker
from llmlab.runner import Run
from llmlab.train import trainer as trainer_module
from tests.conftest import run_config

# every capture step of a 12-step FAST run, with figures drawn inline
CAPTURE = ["monitors.attention.every=6", "monitors.distribution.every=6", "monitors.health.every=6",
           "monitors.max_workers=1"]


# ---- statistics ---------------------------------------------------------------------------------
def test_tensor_stats_match_numpy():
    x = torch.randn(300, 70, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails
    x[0, :5] = 0.0
    got = tensor_stats({"x": x})["x"]
    a = x.numpy().astype(np.float64).ravel()
    assert got["mean"] == pytest.approx(a.mean(), abs=1e-5)
    assert got["std"] == pytest.approx(a.std(), rel=1e-4)
    assert got["min"] == pytest.approx(a.min()) and got["max"] == pytest.approx(a.max())
    assert got["abs_max"] == pytest.approx(np.abs(a).max())
    assert got["l2_norm"] == pytest.approx(np.linalg.norm(a), rel=1e-4)
    assert got["rms"] == pytest.approx(np.sqrt((a**2).mean()), rel=1e-4)
    kurtosis = ((a - a.mean()) ** 4).mean() / a.var() ** 2 - 3
    assert got["kurtosis"] == pytest.approx(kurtosis, rel=1e-3)
    assert got["sparsity"] == pytest.approx((np.abs(a) < 1e-6).mean())
    for q in (1, 5, 25, 50, 75, 95, 99):
        assert got[f"p{q}"] == pytest.approx(np.percentile(a, q), rel=1e-4, abs=1e-6)
    assert got["nonfinite"] == 0


def test_tensor_stats_count_and_skip_nonfinite_values():
    got = tensor_stats({"x": torch.tensor([1.0, float("nan"), 3.0, float("inf")])})["x"]
    assert got["nonfinite"] == 2
    assert (got["mean"], got["min"], got["max"]) == (2.0, 1.0, 3.0)


def test_histograms_match_numpy():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    counts, edges = tensor_histograms({"x": x}, bins=16)["x"]
    expected, expected_edges = np.histogram(x.numpy(), bins=16)
    assert np.array_equal(counts, expected)
    assert np.allclose(edges, expected_edges, atol=1e-5)


# ---- attention ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_explicit_attention_matches_sdpa_and_a_reference(kv_heads):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=kv_heads, context_length=16,
                                    vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 16))
    logits, probs = attention_probabilities(model, idx)
    assert torch.allclose(logits, model(idx), atol=1e-5)  # the explicit path computes what SDPA computes
    assert len(probs) == 2 and probs[0].shape == (2, 4, 16, 16)
    assert torch.allclose(probs[1].sum(-1), torch.ones(2, 4, 16), atol=1e-6)
    assert torch.all(probs[0].triu(1) == 0)  # causal
    # reference for layer 0: softmax(q k^T / sqrt(d)) from the layer's own projections
    block = model.blocks[0]
    x = block.attn_norm(model.tok_emb(idx))
    attn = block.attn
    q = attn.q_proj(x).view(2, 16, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, 16, attn.n_kv_heads, 8).transpose(1, 2)
    from llmlab.model.transformer import apply_rope
    q, k = apply_rope(q, model.rope_cos[:16], model.rope_sin[:16]), apply_rope(k, model.rope_cos[:16],
                                                                                model.rope_sin[:16])
    k = k.repeat_interleave(4 // attn.n_kv_heads, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    reference = F.softmax(scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf")), -1)
    assert torch.allclose(probs[0], reference, atol=1e-5)
    assert all(not a.keep_probs and a.probs is None for a in (b.attn for b in model.blocks))


def test_attention_stats_of_uniform_causal_attention():
    T = 8
    uniform = torch.ones(T, T).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]  # (1, 1, T, T)
    stats = dict(zip(HEAD_STATS, attention_stats(uniform)[0].tolist(), strict=True))
    rows = np.arange(1, T + 1)
    assert stats["entropy"] == pytest.approx(np.log(rows).mean(), rel=1e-5)
    assert stats["sink"] == pytest.approx((1 / rows).mean(), rel=1e-5)
    assert stats["max"] == pytest.approx((1 / rows).mean(), rel=1e-5)
    assert stats["distance"] == pytest.approx(((rows - 1) / 2).mean(), rel=1e-5)


# ---- machinery ----------------------------------------------------------------------------------
def test_schedule_every_steps_and_epochs():
    schedule = Schedule(every=10, steps=[3], epochs=[0.5, 2])
    schedule.resolve(steps_per_epoch=7)
    assert [s for s in range(1, 31) if schedule.due(s)] == [3, 4, 10, 14, 20, 30]


def test_worker_queue_is_bounded_drops_oldest_and_close_flushes():
    gate, done = threading.Event(), []
    worker = BackgroundWorker(max_workers=1, max_pending=3)
    worker.submit("m", gate.wait)  # occupies the only thread
    time.sleep(0.05)
    for i in range(10):
        worker.submit("m", lambda i=i: done.append(i))
    assert worker.pending() <= 1 + 3
    assert worker.dropped == 7
    gate.set()
    assert worker.close(timeout=10)
    assert done == [7, 8, 9]  # the newest survive


def test_worker_reports_a_failing_job_and_keeps_going():
    errors, done = [], []
    worker = BackgroundWorker(max_workers=2, on_error=lambda owner, exc: errors.append((owner, str(exc))))
    worker.submit("bad", lambda: 1 / 0)
    worker.submit("good", lambda: done.append(1))
    worker.close(timeout=10)
    assert errors == [("bad", "division by zero")] and done == [1]


def test_health_monitor_flags_a_loss_spike_once(tmp_path):
    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, window=20, z_threshold=5.0, every=0))
    ctx = MonitorContext(model=torch.nn.Linear(2, 2), out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"))
    monitor.on_train_start(ctx, 0)
    rng = np.random.default_rng(0)
    for step in range(1, 40):
        loss = 10.0 if step == 30 else 2.0 + 0.01 * rng.standard_normal()
        monitor.on_step_end(StepInfo(step, loss, 1.0 + 0.01 * rng.standard_normal(), 1e-3, step))
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"], a["subject"]) for a in alerts] == [(30, "spike", "loss")]


# ---- whole runs ---------------------------------------------------------------------------------
def losses(run_dir):
    return [(r["step"], r.get("train/loss"), r.get("val/loss"))
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_full_monitors_write_files_and_tensorboard_and_leave_training_unchanged(tmp_path):
    full = Run(run_config(tmp_path / "full", ["monitors=full", *CAPTURE])).execute()
    none = Run(run_config(tmp_path / "none", ["monitors=none"])).execute()
    assert full.status == none.status == "completed"
    assert losses(tmp_path / "full/run") == losses(tmp_path / "none/run")  # monitors observe, never steer

    out = tmp_path / "full/run"
    attention = out / "monitors/attention/step_12"
    assert {"statistics.json", "layer0_avg.png", "layer1_heads.png", "layer_comparison.png"} <= {
        p.name for p in attention.iterdir()}
    stats = json.loads((attention / "statistics.json").read_text())
    assert stats["step"] == 12 and set(stats["layers"]) == {"layer0", "layer1"}
    assert len(stats["layers"]["layer0"]["heads"]) == 4
    assert len((out / "monitors/attention/history.jsonl").read_text().splitlines()) == 2

    dist = out / "monitors/distribution/step_6"
    layer_stats = json.loads((dist / "layer_statistics.json").read_text())
    assert "blocks.1.mlp.down_proj.weight" in layer_stats["weights"]
    assert 0 < layer_stats["weights"]["blocks.1.mlp.down_proj.weight"]["update_ratio"] < 1
    assert {"blocks.0", "blocks.0.attn", "blocks.1.mlp"} <= set(layer_stats["activations"])
    assert "tok_emb.weight" in layer_stats["gradients"]
    assert (dist / "weights/blocks.0.attn.q_proj.weight.png").is_file()
    assert (dist / "weights/blocks.0.attn.q_proj.weight_heatmap.png").is_file()
    assert not (dist / "weights/blocks.0.attn_norm.weight_heatmap.png").exists()  # 1-D: no heatmap
    assert (dist / "activations/blocks.1_heatmap.png").is_file()
    assert (dist / "gradients/blocks.1.mlp.up_proj.weight.png").is_file()

    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"attention/layer0/entropy", "attention/layer1/sink", "weights/blocks.0.mlp.up_proj.weight/update_ratio",
            "gradients/tok_emb.weight/l2_norm", "activations/blocks.1/kurtosis",
            "health/layer0/dead_mlp_fraction"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("attention/layer0/entropy")] == [6, 12]
    assert "weights/blocks.0.attn.q_proj.weight" in tags["histograms"]
    assert "activations/blocks.0.mlp" in tags["histograms"]
    assert {"attention/layer0_avg", "attention/layer_comparison"} <= set(tags["images"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["monitors"]["dropped_jobs"] == 0 and metrics["monitors"]["disabled"] == {}

    # every scalar a monitor logs reaches every sink: monitors.jsonl holds each TensorBoard value of theirs, and
    # metrics.jsonl stays the trainer's, the same keys whichever monitors watch
    logged = {(key, row["step"]): value for row in map(json.loads, (out / "monitors.jsonl").read_text().splitlines())
              for key, value in row.items() if key != "step"}
    trainer_keys = {k for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) for k in r}
    monitor_tags = {t for t in tags["scalars"] if t.split("/")[0] not in ("train", "val", "perf", "final")}
    assert len(monitor_tags) > 100 and monitor_tags == {key for key, _ in logged}
    for tag in monitor_tags:
        for event in events.Scalars(tag):
            assert logged[tag, event.step] == pytest.approx(event.value, rel=1e-6, abs=1e-6), tag  # float32 in TB
    assert trainer_keys == {k for r in map(json.loads, (tmp_path / "none/run/metrics.jsonl").read_text().splitlines())
                            for k in r}


@pytest.mark.slow
def test_light_monitors_write_statistics_and_two_attention_maps(tmp_path):
    Run(run_config(tmp_path, CAPTURE)).execute()  # light is the default
    out = tmp_path / "run/monitors"
    # the first and last layer's head-averaged maps; no head grids, layer comparison or distribution figures
    assert sorted(p.name for p in (out / "attention/step_6").iterdir()) == [
        "layer0_avg.png", "layer1_avg.png", "statistics.json"]
    assert sorted(p.name for p in (out / "distribution/step_12").iterdir()) == ["layer_statistics.json"]
    assert len((out / "distribution/history.jsonl").read_text().splitlines()) == 2


class Exploding(Monitor):
    name = "exploding"

    def __init__(self):
        super().__init__(Schedule(every=1))
        self.calls = 0

    def on_step_end(self, info):
        self.calls += 1
        raise RuntimeError("plotting failed")


@pytest.mark.slow
def test_a_monitor_that_raises_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    exploding = Exploding()
    import llmlab.monitors.build as build_module
    original = build_module.build_monitors
    monkeypatch.setattr(build_module, "build_monitors", lambda *args, **kw: [exploding, *original(*args, **kw)])
    result = Run(run_config(tmp_path, CAPTURE)).execute()
    assert result.status == "completed" and result.steps == 12
    assert exploding.calls == 1  # disabled after the first failure
    alerts = [json.loads(line) for line in (tmp_path / "run/alerts.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["subject"]) for a in alerts] == [("monitor_error", "exploding")]
    assert capsys.readouterr().err.count("monitor 'exploding' raised RuntimeError") == 1
    assert (tmp_path / "run/monitors/distribution/step_12/layer_statistics.json").is_file()  # others unaffected


def alerts_of(run_dir) -> list[tuple[str, str]]:
    return [(a["kind"], a["subject"]) for a in map(json.loads, (run_dir / "alerts.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_plotting_that_raises_disables_its_monitor_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from llmlab.monitors import plots

    def broken_render(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "render", broken_render)  # figures drawn inline (max_workers=0) see the patch
    overrides = ["monitors=full", *CAPTURE, "monitors.max_workers=0"]
    result = Run(run_config(tmp_path, overrides)).execute()
    assert result.status == "completed" and result.steps == 12
    assert sorted(alerts_of(tmp_path / "run")) == [("monitor_error", "attention"), ("monitor_error", "distribution")]
    assert capsys.readouterr().err.count("monitor 'attention' raised OSError: disk full") == 1
    # what came before the figures was written; the second capture never happened for a disabled monitor
    assert (tmp_path / "run/monitors/attention/step_6/statistics.json").is_file()
    assert not (tmp_path / "run/monitors/attention/step_12").exists()


@pytest.mark.slow
def test_a_full_monitor_queue_drops_the_oldest_jobs_and_says_so_once(tmp_path, monkeypatch):
    from llmlab.monitors.attention import AttentionMonitor
    from llmlab.monitors.base import MonitorSet
    from llmlab.monitors.distribution import DistributionMonitor

    disk_back = threading.Event()  # every file job blocks on a stalled disk until training has ended
    for cls in (AttentionMonitor, DistributionMonitor):
        write = cls._write
        monkeypatch.setattr(cls, "_write", lambda self, *a, w=write: (disk_back.wait(60), w(self, *a)))
    close = MonitorSet.close
    monkeypatch.setattr(MonitorSet, "close", lambda self, **kw: (disk_back.set(), close(self, **kw))[1])
    every = ["monitors.attention.every=1", "monitors.distribution.every=1", "monitors.max_workers=1",
             "monitors.max_pending=1"]
    result = Run(run_config(tmp_path, every)).execute()
    summary = json.loads((tmp_path / "run/metrics.json").read_text())["monitors"]
    assert result.status == "completed" and result.steps == 12
    # 24 jobs: one running, one queued, the rest dropped (22, or 23 if the thread started late)
    assert summary["dropped_jobs"] >= 22 and summary["dropped_jobs"] + summary["completed_jobs"] == 24
    assert alerts_of(tmp_path / "run").count(("queue_full", "worker")) == 1


def poison_step(monkeypatch, steps: set[int]):
    """Make the loss non-finite on the given steps (a poisoned batch)."""
    original = trainer_module.Trainer.train_step

    def train_step(self, stop=None):
        if self.state.step + 1 in steps:
            objective_loss = self.objective.loss
            self.objective.loss = lambda *args: objective_loss(*args) * float("nan")
            try:
                return original(self, stop)
            finally:
                del self.objective.loss
        return original(self, stop)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_counted_and_alerted(tmp_path, monkeypatch):
    poison_step(monkeypatch, {4, 5})
    result = Run(run_config(tmp_path, CAPTURE)).execute()
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert result.status == "completed" and metrics["skipped_steps"] == 2
    assert all(math.isfinite(loss) for _, loss, _ in losses(tmp_path / "run") if loss is not None)
    alerts = [json.loads(line) for line in (tmp_path / "run/alerts.jsonl").read_text().splitlines()]
    nonfinite = [a for a in alerts if a["kind"] == "nonfinite"]
    assert [a["step"] for a in nonfinite] == [4, 5]
    assert nonfinite[0]["subject"] == "tok_emb.weight"  # the first parameter, in forward order


@pytest.mark.slow
def test_nonfinite_stop_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_step(monkeypatch, {8})
    result = Run(run_config(tmp_path, [*CAPTURE, "trainer.on_nonfinite=stop"])).execute()
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert result.status == "failed" and metrics["status"] == "failed"
    assert "non-finite loss" in metrics["message"] and "step 8" in metrics["message"]
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step_*")) == ["step_6"]


@pytest.mark.slow
def test_too_many_consecutive_nonfinite_steps_end_the_run(tmp_path, monkeypatch):
    poison_step(monkeypatch, {3, 4, 5})
    result = Run(run_config(tmp_path, [*CAPTURE, "trainer.max_nonfinite_skips=2"])).execute()
    assert result.status == "failed" and "max_nonfinite_skips=2" in result.message


@pytest.mark.slow
def test_overhead_benchmark_writes_its_json_and_the_variants_train_identically(tmp_path):
    out = tmp_path / "monitors.json"
    overrides = ["model.n_layers=1", "model.d_model=32", "model.context_length=32", "data.train_docs=300",
                 "data.val_docs=40", "trainer.eval_batches=2", f"cache_dir={tmp_path / 'cache'}",
                 "monitors.attention.every=2", "monitors.distribution.every=2", "monitors.max_workers=0"]
    from llmlab.bench.__main__ import main as bench

    bench(["monitors", "--model", "tiny", "--steps", "4", "--block", "2", "--warmup", "1", "--batch-size", "4",
           "--device", "cpu", "--out", str(out), *overrides])
    result = json.loads(out.read_text())
    assert result["losses_identical"] is True and result["timed_steps_per_variant"] == 4
    assert set(result["variants"]) == {"none", "light", "full"}
    assert result["variants"]["none"]["ratio"] == 1.0
    assert all(v["seconds"] > 0 and v["dropped_jobs"] == 0 for v in result["variants"].values())


def test_health_probe_flags_entropy_collapse_and_dead_mlp_units(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=40))
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.mul_(1e4)  # scores so large that softmax is one-hot: entropy ~ 0
        model.blocks[1].mlp.up_proj.weight[: model.cfg.ffn_dim // 2] = 0  # half of layer 1's units never fire
    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, every=5))
    ctx = MonitorContext(model=model, out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"), probe=torch.randint(0, 40, (2, 16)))
    monitor.on_train_start(ctx, 0)
    for step in range(1, 6):
        monitor.on_step_end(StepInfo(step, 2.0, 1.0, 1e-3, step))
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"], a["subject"]) for a in alerts] == [
        (5, "entropy_collapse", "layer0"), (5, "dead_units", "layer1")]
    assert alerts[1]["fraction"] == pytest.approx(0.5)
