"""Training step against transformers: llmlab's model vs `LlamaForCausalLM` (`--arch gpt2`: `GPT2LMHeadModel`)
holding the same weights, on the same batch, forward + backward + AdamW step, in one process, interleaved.

For each size preset the llmlab model is built, exported with `to_hf` (so both start from the same weights),
and both take `--repeats` steps of the same batch, alternating which goes first; the figure is the ratio of
median step times (< 1: llmlab is faster). Both compute the loss the same way, from logits. On a GPU:
`--device cuda --precision bf16` (autocast), `--compile` (torch.compile both) and `--peak-flops` for MFU.
Written to bench/vs_transformers.json.

`--reference`: the other contender is instead a minimal GPT built here (llmlab/bench/reference_gpt.py: the shape
of the usual teaching implementations, fused q/k/v, plain RMSNorm and RoPE formulas, a Python-loop AdamW) holding
the same weights, and llmlab steps with the optimizer its trainer builds (fused AdamW).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SIZES = {  # conf/model presets, with the batch a step of each takes on a CPU in well under a few seconds
    "tiny": dict(n_layers=4, d_model=128, n_heads=4, context_length=128, batch=16),
    "small": dict(n_layers=6, d_model=256, n_heads=8, context_length=256, batch=8),
    "medium": dict(n_layers=12, d_model=512, n_heads=8, context_length=512, batch=2),
}
# on a GPU only (python -m llmlab.bench gpu): GPT-2 124M's shape
LARGE = {"gpt2_124m": dict(n_layers=12, d_model=768, n_heads=12, context_length=1024, batch=16)}
# short steps scatter more (a CPU's ±4% on 12 steps of 0.1 s): more of them for the same confidence
REPEATS = {"tiny": 60, "small": 20, "medium": 12, "gpt2_124m": 20}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=[*SIZES, *LARGE])
    parser.add_argument("--repeats", type=int, default=None, help=f"timed steps per model (default {REPEATS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    parser.add_argument("--gelu", choices=["exact", "tanh"], default="exact",
                        help="--arch gpt2: model.gelu (transformers gets the same: gelu or gelu_new)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, for GPUs")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="the device's peak FLOP/s: adds MFU")
    parser.add_argument("--reference", action="store_true",
                        help="against a minimal teaching-style GPT with a loop AdamW instead of transformers")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile 5 llmlab steps: each op's share of self CPU time (top 12)")
    parser.add_argument("--out", default="bench/vs_transformers.json")


GPT2_STYLE = dict(positions="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)


def step_time(forward, optimizer, ids: torch.Tensor, dtype: torch.dtype | None) -> float:
    """One training step of forward (ids -> logits) and its optimizer, in seconds."""
    synchronize(ids.device)
    start = time.perf_counter()
    with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype is not None):
        logits = forward(ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(ids.device)
    return time.perf_counter() - start


def profile_shares(forward, optimizer, ids: torch.Tensor, dtype: torch.dtype | None, top: int = 12) -> dict:
    """Each op's share of self CPU time over 5 training steps (the top ones): what a step is made of."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step_time(forward, optimizer, ids, dtype)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {e.key: round(e.self_cpu_time_total / total, 4) for e in ranked}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(size: str, args: argparse.Namespace) -> dict:
    from llmlab.bench.reference_gpt import LoopAdamW, reference_of
    from llmlab.config.schema import ModelConfig, TrainerConfig
    from llmlab.interop.hf import to_hf
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    shape = dict({**SIZES, **LARGE}[size])
    batch = shape.pop("batch")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    style = {**GPT2_STYLE, "gelu": getattr(args, "gelu", "exact")} if args.arch == "gpt2" else {}
    ours = Transformer(ModelConfig(name=size, vocab_size=args.vocab, **shape, **style)).train()
    other = "reference" if args.reference else "transformers"
    if args.reference:
        theirs, rope = reference_of(ours)
        theirs, rope = theirs.train().to(device), tuple(t.to(device) for t in rope) if rope else ()
        optimizers = {"llmlab": build_optimizer(ours.to(device), TrainerConfig(lr=1e-4, optimizer="adamw"), device),
                      other: LoopAdamW(theirs.parameters(), lr=1e-4)}
    else:
        theirs, rope = to_hf(ours).train().to(device), ()  # the same weights, copied
        optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("llmlab", ours),
                                                                                       (other, theirs))}
    ours = ours.to(device)
    ids = torch.randint(0, args.vocab, (batch, shape["context_length"]), device=device)
    compiled = (torch.compile(ours), torch.compile(theirs)) if args.compile else (ours, theirs)
    forwards = {"llmlab": compiled[0],
                other: (lambda x: compiled[1](x, *rope)) if args.reference else (lambda x: compiled[1](x).logits)}
    with torch.no_grad():  # the same work: both give the same logits before any step
        logit_gap = (ours(ids) - (theirs(ids, *rope) if args.reference else theirs(ids).logits)).abs().max().item()
    times: dict[str, list[float]] = {"llmlab": [], other: []}
    repeats = args.repeats or REPEATS[size]
    for i in range(args.warmup + repeats):
        order = ["llmlab", other] if i % 2 == 0 else [other, "llmlab"]
        for name in order:
            seconds = step_time(forwards[name], optimizers[name], ids, dtype)
            if i >= args.warmup:
                times[name].append(seconds)
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    profile = getattr(args, "profile", False)
    shares = profile_shares(forwards["llmlab"], optimizers["llmlab"], ids, dtype) if profile else None
    # the median of each round's ratio as well: a busy machine slows both of one round alike
    paired = statistics.median(a / b for a, b in zip(times["llmlab"], times[other], strict=True))
    result = {"batch": batch, **shape, "repeats": repeats, "params": sum(p.numel() for p in ours.parameters()),
              "max_logit_difference": logit_gap, "ms_per_step": median,
              "ratio": median["llmlab"] / median[other], "paired_ratio": paired}
    if shares:
        result["llmlab_self_cpu_share"] = shares
    if args.peak_flops:  # model FLOPs utilisation of each, from llmlab's count of training FLOPs per token
        flops = ours.flops_per_token() * batch * shape["context_length"]
        result["mfu"] = {name: flops / (ms / 1000) / args.peak_flops for name, ms in median.items()}
    return result


def main(args: argparse.Namespace) -> None:
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    other = "reference" if args.reference else "transformers"
    results = {}
    for size in args.sizes:
        results[size] = compare(size, args)
        r = results[size]
        print(f"{size}: llmlab {r['ms_per_step']['llmlab']:.1f} ms, {other} "
              f"{r['ms_per_step'][other]:.1f} ms, ratio {r['ratio']:.3f} (paired {r['paired_ratio']:.3f})")
    report = {"what": "forward + backward + AdamW step, same weights and batch, median of interleaved steps",
              "against": other, "arch": args.arch, "gelu": args.gelu if args.arch == "gpt2" else None,
              "device": args.device, "precision": args.precision,
              "compile": args.compile,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "sizes": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
