"""What makes runs fast without changing them: regional compilation for training forwards only, no matplotlib
until something draws, the timing block of metrics.json, and the GPU check's pieces (run here on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config

from llmlab.bench import gpu
from llmlab.config.schema import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.train.timing import Timings


class Counting(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block, self.calls = block, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.block(*args, **kwargs)


def test_compiled_blocks_run_in_training_forwards_only_and_leave_names_alone():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=23))
    names = list(model.state_dict())
    model.compiled_blocks = counting = [Counting(b) for b in model.blocks]
    ids = torch.randint(0, 23, (2, 16))
    model.train()
    model(ids).sum().backward()
    assert [c.calls for c in counting] == [1, 1]
    with torch.no_grad():
        model(ids)  # no gradients: evaluation
    model.eval()
    model(ids)
    assert [c.calls for c in counting] == [1, 1]
    assert list(model.state_dict()) == names


def test_compile_blocks_computes_what_the_eager_blocks_do():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=23)).train()
    ids = torch.randint(0, 23, (2, 16))
    eager = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    model.compile_blocks(backend="eager")  # dynamo's tracing without inductor: seconds, no C++ compiler
    compiled = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    assert abs(eager.item() - compiled.item()) < 1e-6


def test_importing_the_runner_imports_no_matplotlib():
    code = "import sys, llmlab.runner; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_timings_sum_by_kind_and_keep_each_evaluation():
    timings = Timings()
    timings.add("checkpoint", 0.5)
    timings.add("checkpoint", 0.25)
    with timings.measure("sampling"):
        pass
    timings.evals += [1.0, 2.0]
    summary = timings.summary()
    assert summary["checkpoint_s"] == 0.75 and summary["checkpoint_count"] == 2
    assert summary["sampling_count"] == 1 and summary["eval_s_each"] == [1.0, 2.0]


@pytest.mark.slow
def test_metrics_json_says_where_the_time_outside_training_went(tmp_path):
    from llmlab.runner import Run

    Run(run_config(tmp_path, ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=4"])).execute()
    timing = json.loads((tmp_path / "run" / "metrics.json").read_text())["timing"]
    assert timing["startup_s"] > 0 and timing["checkpoint_count"] == 1
    assert timing["val_loss_count"] == 2 and len(timing["eval_s_each"]) == 2
    assert timing["sampling_count"] == 2


def test_the_gpu_check_stops_with_one_line_without_a_gpu(monkeypatch):
    from llmlab.bench.__main__ import main as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        bench(["gpu", "--out", "/nonexistent/never-written.json"])
    message = str(stopped.value)
    assert "no CUDA GPU" in message and "\n" not in message


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
])
def test_peak_flops_come_from_the_table_by_device_name(name, peak):
    assert gpu.peak_flops(name)[0] == peak


def test_peak_flops_can_be_given_and_an_unknown_device_asks_for_them():
    assert gpu.peak_flops("NVIDIA H100", 1e15) == (1e15, "--peak-flops")
    peak, why = gpu.peak_flops("Some Future Accelerator")
    assert peak is None and "--peak-flops" in why


def test_the_gpu_checks_fused_kernel_section_runs_on_the_cpu():
    result = gpu.fused_check(torch.device("cpu"), repeats=1, batch=1, tokens=16)
    assert set(result) == {"rms_norm", "rope", "qkv_matmul"}
    for record in result.values():
        assert record["max_value_difference_fp32"] < 1e-5 and record["max_grad_difference_fp32"] < 1e-4
        assert record["fused_ms"] > 0 and record["plain_ms"] > 0


def test_the_gpu_checks_generation_section_runs_on_the_cpu():
    result = gpu.generation(torch.device("cpu"), batch=2, prompt=4, new=4, repeats=1)
    assert result["same_tokens"] and result["tokens_per_s"]["llmlab_cache"] > 0


def test_the_gpu_checks_ddp_run_is_one_nccl_process_through_the_cli(tmp_path):
    command = gpu.ddp_command(tmp_path, steps=20)
    assert "--nproc_per_node=1" in command and "device=cuda" in command and "trainer.max_steps=20" in command


@pytest.mark.slow
def test_the_gpu_checks_ddp_section_runs_on_the_cpu():
    result = gpu.ddp(steps=3, device="cpu")
    assert result["ok"], result
    assert result["steps"] == 3 and result["backend"] == "gloo" and result["timing"]["startup_s"] > 0


def test_the_fused_benchmark_races_each_piece_against_what_it_replaces(tmp_path):
    from llmlab.bench.__main__ import main as bench

    out = tmp_path / "fused.json"
    bench(["fused", "--widths", "32", "--tokens", "128", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["rms_norm"]) == {"fused", "F.rms_norm", "plain"}
    assert report["qkv"]["32"]["three"]["one_matmul_over_this"] > 0


def test_trainer_compile_compiles_the_blocks_with_the_kernel_cache_under_cache_dir(tmp_path, monkeypatch):
    import os

    from llmlab.config.schema import TrainerConfig
    from llmlab.train import distributed

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=23))
    trained = distributed.prepare(model, TrainerConfig(compile=True), distributed.SINGLE, torch.device("cpu"),
                                  str(tmp_path / "cache"))
    assert trained is model and len(model.compiled_blocks) == 2  # compiled lazily, at the first training step
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache" / "inductor").resolve())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")  # the user's own wins
    distributed.prepare(model, TrainerConfig(compile=True), distributed.SINGLE, torch.device("cpu"), str(tmp_path))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"


@pytest.mark.slow
def test_the_gpu_checks_training_section_runs_on_the_cpu():
    import argparse
    import time

    args = argparse.Namespace(archs=["llama", "gpt2"], compile_archs=[], sizes=["tiny"], repeats=1)
    rows = gpu.training(args, 1e12, time.perf_counter() + 600, device="cpu")
    assert set(rows) == {"llama/tiny/eager", "gpt2/tiny/eager"}
    assert all(r["max_logit_difference"] < 1e-4 and 0 < r["mfu"]["llmlab"] < 1 for r in rows.values())
