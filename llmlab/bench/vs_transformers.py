"""Training step against transformers: llmlab's model vs `LlamaForCausalLM` (`--arch gpt2`: `GPT2LMHeadModel`)
holding the same weights, on the same batch, forward + backward + AdamW step, in one process, interleaved.

For each size preset the llmlab model is built, exported with `to_hf` (so both start from the same weights),
and both take `--repeats` steps of the same batch, alternating which goes first; the figure is the ratio of
median step times (< 1: llmlab is faster). Both compute the loss the same way, from logits. On a GPU:
`--device cuda --precision bf16` (autocast), `--compile` (torch.compile both) and `--peak-flops` for MFU.
Written to bench/vs_transformers.json.
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
# short steps scatter more (a CPU's ±4% on 12 steps of 0.1 s): more of them for the same confidence
REPEATS = {"tiny": 60, "small": 20, "medium": 12}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help=f"timed steps per model (default {REPEATS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, for GPUs")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="the device's peak FLOP/s: adds MFU")
    parser.add_argument("--out", default="bench/vs_transformers.json")


GPT2_STYLE = dict(positions="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)


def step_time(model, optimizer, ids: torch.Tensor, hf: bool, dtype: torch.dtype | None) -> float:
    synchronize(ids.device)
    start = time.perf_counter()
    with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(ids).logits if hf else model(ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(ids.device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(size: str, args: argparse.Namespace) -> dict:
    from llmlab.config.schema import ModelConfig
    from llmlab.interop.hf import to_hf
    from llmlab.model.transformer import Transformer

    shape = dict(SIZES[size])
    batch = shape.pop("batch")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    style = GPT2_STYLE if args.arch == "gpt2" else {}
    ours = Transformer(ModelConfig(name=size, vocab_size=args.vocab, **shape, **style)).train()
    theirs = to_hf(ours).train()  # the same weights, copied
    ours, theirs = ours.to(device), theirs.to(device)
    ids = torch.randint(0, args.vocab, (batch, shape["context_length"]), device=device)
    with torch.no_grad():  # the same work: both give the same logits before any step
        logit_gap = (ours(ids) - theirs(ids).logits).abs().max().item()
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("llmlab", ours),
                                                                                   ("transformers", theirs))}
    if args.compile:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    models = {"llmlab": (ours, False), "transformers": (theirs, True)}
    times: dict[str, list[float]] = {"llmlab": [], "transformers": []}
    repeats = args.repeats or REPEATS[size]
    for i in range(args.warmup + repeats):
        order = ["llmlab", "transformers"] if i % 2 == 0 else ["transformers", "llmlab"]
        for name in order:
            model, hf = models[name]
            seconds = step_time(model, optimizers[name], ids, hf, dtype)
            if i >= args.warmup:
                times[name].append(seconds)
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    result = {"batch": batch, **shape, "repeats": repeats, "params": sum(p.numel() for p in ours.parameters()),
              "max_logit_difference": logit_gap, "ms_per_step": median,
              "ratio": median["llmlab"] / median["transformers"]}
    if args.peak_flops:  # model FLOPs utilisation of each, from llmlab's count of training FLOPs per token
        flops = getattr(ours, "_orig_mod", ours).flops_per_token() * batch * shape["context_length"]
        result["mfu"] = {name: flops / (ms / 1000) / args.peak_flops for name, ms in median.items()}
    return result


def main(args: argparse.Namespace) -> None:
    import transformers

    results = {}
    for size in args.sizes:
        results[size] = compare(size, args)
        r = results[size]
        print(f"{size}: llmlab {r['ms_per_step']['llmlab']:.1f} ms, transformers "
              f"{r['ms_per_step']['transformers']:.1f} ms, ratio {r['ratio']:.3f}")
    report = {"what": "forward + backward + AdamW step, same weights and batch, median of interleaved steps",
              "arch": args.arch, "device": args.device, "precision": args.precision, "compile": args.compile,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "sizes": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
