"""GPU check (`make gpu-check`): on one CUDA GPU, in about 8 minutes, one JSON (bench/gpu.json) with

- training: a bf16 training step of llmlab against `transformers` (same weights, same batch, interleaved; see
  vs_transformers) at tiny, small and gpt2_124m, eager for both styles and compiled for --compile-archs;
- mfu: model FLOPs utilisation at gpt2_124m from the device's peak bf16 FLOP/s (PEAK_BF16_FLOPS by device name,
  or --peak-flops);
- ddp: a 1-GPU torchrun DDP run (nccl) of 20 steps through the real CLI;
- generation: greedy KV-cache decoding tokens/s against `transformers.generate`, same tokens;
- fused: the fused kernels (RMSNorm, RoPE, q/k/v as one matmul) against the plain formulas on the GPU, values
  and gradients, and their forward + backward times.

Without a GPU it stops at once with one line saying so. Sections past --budget-s are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmlab.rundir import RunDir

# dense bf16 tensor-core peak FLOP/s by device name (vendors' datasheets; no sparsity), longest name matched first
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
    "A100": 312e12, "A10": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "RTX A6000": 155e12,  # GeForce: with fp32 accumulation
}  # no T4 or V100: they have no bf16 tensor cores
SIZES = ("tiny", "small", "gpt2_124m")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--archs", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    parser.add_argument("--compile-archs", nargs="*", default=["gpt2"], choices=["llama", "gpt2"],
                        help="styles also timed with torch.compile (compiling takes a minute or so per model)")
    parser.add_argument("--repeats", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="the GPU's peak bf16 FLOP/s (default: table)")
    # the short sections first: the training rows stop at --budget-s, so they cannot crowd the others out
    parser.add_argument("--sections", nargs="+", default=["fused", "generation", "ddp", "training"],
                        choices=["fused", "generation", "ddp", "training"])
    parser.add_argument("--budget-s", type=float, default=420.0, help="sections starting later are skipped")
    parser.add_argument("--out", default="bench/gpu.json")


def require_gpu() -> torch.device:
    if not torch.cuda.is_available():
        raise SystemExit("python -m llmlab.bench gpu: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                         "run it on a machine with one")
    return torch.device("cuda")


def peak_flops(device_name: str, override: float = 0.0) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it came from) for a device name such as 'NVIDIA H100 80GB HBM3'."""
    if override:
        return override, "--peak-flops"
    for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if name.lower() in device_name.lower():
            return PEAK_BF16_FLOPS[name], f"table: {name}"
    return None, f"{device_name!r} is not in the table: pass --peak-flops"


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() over repeats, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fused_check(device: torch.device, repeats: int = 20, batch: int = 8, tokens: int = 1024) -> dict:
    """Each fused piece against its plain formula on device: max differences of values and input gradients (fp32
    and bf16 autocast) and median forward + backward milliseconds of each (bf16 on a GPU; a gpt2_124m-sized
    activation, batch x tokens x 768)."""
    from llmlab.model.fused import rms_norm, rotate_heads
    from llmlab.model.transformer import apply_rope, fused_linear

    def plain_rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def plain_rope(qk, cos, sin):  # the reference in (B, heads, T, hd)
        return apply_rope(qk.transpose(1, 2), cos, sin).transpose(1, 2)

    linears = [torch.nn.Linear(768, 768, device=device) for _ in range(3)]
    cases = {
        "rms_norm": (lambda x: rms_norm(x, w, 1e-5), lambda x: plain_rms(x, w), (batch, tokens, 768)),
        "rope": (lambda x: rotate_heads(x, cos[:, None], sin[:, None]), lambda x: plain_rope(x, cos, sin),
                 (batch, tokens, 24, 64)),  # q's 12 heads and k's 12 together
        "qkv_matmul": (lambda x: fused_linear(x, *linears), lambda x: torch.cat([m(x) for m in linears], -1),
                       (batch, tokens, 768)),
    }
    w = torch.randn(768, device=device)
    angles = torch.outer(torch.arange(float(tokens), device=device), torch.rand(32, device=device))
    cos, sin = angles.cos(), angles.sin()
    out = {}
    for name, (fused, plain, shape) in cases.items():
        record = {}
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=device)
            results = []
            for fn in (fused, plain):
                xi = x.detach().clone().requires_grad_()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    y = fn(xi)
                grad = torch.randn(y.shape, device=device, generator=torch.Generator(device).manual_seed(1))
                y.float().backward(grad)
                results.append((y.detach().float(), xi.grad.float()))
            tag = "fp32" if dtype == torch.float32 else "bf16"
            record[f"max_value_difference_{tag}"] = (results[0][0] - results[1][0]).abs().max().item()
            record[f"max_grad_difference_{tag}"] = (results[0][1] - results[1][1]).abs().max().item()
        for label, fn in (("fused_ms", fused), ("plain_ms", plain)):
            xi = torch.randn(shape, device=device, requires_grad=True)

            def step(fn=fn, xi=xi):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    y = fn(xi)
                y.float().sum().backward()

            record[label] = timed(step, repeats, device) * 1000
        record["speedup"] = record["plain_ms"] / record["fused_ms"]
        out[name] = record
        print(f"fused {name}: {record['fused_ms']:.3f} ms vs plain {record['plain_ms']:.3f} ms, fp32 max value "
              f"difference {record['max_value_difference_fp32']:.2e}")
    return out


def training(args: argparse.Namespace, peak: float | None, deadline: float, device: str = "cuda") -> dict:
    from llmlab.bench.vs_transformers import compare

    rows: dict = {}
    for arch in args.archs:
        for compiled in (False, True):
            if compiled and arch not in args.compile_archs:
                continue
            for size in args.sizes:
                key = f"{arch}/{size}/{'compiled' if compiled else 'eager'}"
                if time.perf_counter() > deadline:
                    rows[key] = {"skipped": "past --budget-s"}
                    continue
                run = argparse.Namespace(device=device, precision="bf16", compile=compiled, arch=arch,
                                         repeats=args.repeats, warmup=3 if compiled else 2, reference=False,
                                         vocab=50304 if size == "gpt2_124m" else 256, peak_flops=peak or 0.0)
                rows[key] = compare(size, run)
                r = rows[key]
                print(f"{key}: llmlab {r['ms_per_step']['llmlab']:.2f} ms, transformers "
                      f"{r['ms_per_step']['transformers']:.2f} ms, ratio {r['ratio']:.3f}")
    return rows


def generation(device: torch.device, batch: int = 8, prompt: int = 32, new: int = 256, repeats: int = 3) -> dict:
    """Greedy decoding with llmlab's KV cache and with transformers.generate on the same weights (tiny width)."""
    from llmlab.config.schema import ModelConfig
    from llmlab.interop.hf import to_hf
    from llmlab.model.generation import SamplingConfig, generate
    from llmlab.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", n_layers=4, d_model=128, n_heads=4, vocab_size=256, context_length=prompt + new)
    model = Transformer(cfg).eval()
    hf = to_hf(model).eval().to(device)
    model = model.to(device)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=device)
    sampling = SamplingConfig(max_new_tokens=new, temperature=0.0, use_cache=True)
    runs = {"llmlab_cache": lambda: generate(model, ids, sampling),
            "transformers": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                                min_new_tokens=new, do_sample=False, eos_token_id=None,
                                                pad_token_id=0)}
    with torch.no_grad():
        outputs = {name: fn() for name, fn in runs.items()}
        seconds = {name: timed(fn, repeats, device) for name, fn in runs.items()}
    tps = {name: batch * new / s for name, s in seconds.items()}
    print(f"generation: llmlab {tps['llmlab_cache']:,.0f} tok/s, transformers {tps['transformers']:,.0f} tok/s")
    return {"batch": batch, "prompt": prompt, "new": new, "tokens_per_s": tps,
            "vs_transformers": tps["llmlab_cache"] / tps["transformers"],
            "same_tokens": torch.equal(outputs["llmlab_cache"], outputs["transformers"])}


def ddp_command(run_dir: Path, steps: int = 20, device: str = "cuda") -> list[str]:
    """A 1-process torchrun of the real CLI: DDP with nccl on CUDA (llmlab.train.distributed's choice), gloo on
    the CPU (the tests)."""
    precision = ["trainer.precision=bf16"] if device == "cuda" else ["trainer.threads=1"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "llmlab.run",
            f"device={device}", *precision, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
            "trainer.progress=false", "monitors=none", f"hydra.run.dir={run_dir}", f"cache_dir={run_dir}/cache"]


def ddp(steps: int = 20, device: str = "cuda") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "ddp"
        start = time.perf_counter()
        done = subprocess.run(ddp_command(run_dir, steps, device), capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return {"ok": False, "returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}
        summary = json.loads(RunDir(run_dir).summary.read_text())
    print(f"ddp: {summary['steps']} steps, {summary['tokens_per_s']:,.0f} tok/s, {wall:.1f} s in all")
    return {"ok": summary["status"] == "completed" and summary["steps"] == steps,
            "backend": "nccl" if device == "cuda" else "gloo",
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"], "val_loss": summary["val_loss"],
            "wall_s_with_startup": wall, "timing": summary.get("timing")}


def main(args: argparse.Namespace) -> None:
    device = require_gpu()
    start = time.perf_counter()
    deadline = start + args.budget_s
    name = torch.cuda.get_device_name(device)
    peak, peak_source = peak_flops(name, args.peak_flops)
    report: dict = {"gpu": name, "torch": torch.__version__, "peak_bf16_flops": peak, "peak_source": peak_source}
    sections = {"fused": lambda: fused_check(device), "training": lambda: training(args, peak, deadline),
                "generation": lambda: generation(device), "ddp": ddp}
    for section in args.sections:
        if time.perf_counter() > deadline:
            report[section] = {"skipped": "past --budget-s"}
            continue
        section_start = time.perf_counter()
        try:
            report[section] = sections[section]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            report[section] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{section}: {type(exc).__name__}: {exc}", file=sys.stderr)
        report[section + "_s"] = time.perf_counter() - section_start
    big = report.get("training", {}).get("gpt2/gpt2_124m/eager") or report.get("training", {}).get(
        "llama/gpt2_124m/eager")
    if big and "mfu" in big:
        report["mfu_gpt2_124m"] = big["mfu"]
    report["total_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out} ({report['total_s']:.0f} s)")
