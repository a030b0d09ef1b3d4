"""Monitor overhead: the same model trained with monitors=none, light and full, interleaved in one process.

The three runs share seed and data, so they take identical steps (checked: their losses must be
equal). They advance in short blocks of `--block` steps in a rotating order, so drift in machine
speed falls on all three alike, for `--steps` steps each (captures at the default frequency, every
100 steps, land in whichever block holds them: the totals include them all). After each block the
figure backlog is drained and timed separately: `ratio` is step time as training sees it,
`ratio_with_backlog` also charges the drawing that was still pending.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("none", "light", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="small", help="model preset (conf/model)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant (a multiple of --block)")
    parser.add_argument("--block", type=int, default=20, help="steps per block; variants take turns")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/monitors.json")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. trainer.threads=2")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: argparse.Namespace) -> dict:
    from llmlab.runner import Run
    from llmlab.store import compose_run_config

    if args.steps % args.block:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --block {args.block}")
    rounds = args.steps // args.block
    steps = args.warmup + args.steps
    common = [f"model={args.model}", f"trainer.max_steps={steps + 1}", "trainer.eval_every=1000000",
              "trainer.checkpoint_every=1000000", "trainer.progress=false", f"device={args.device}",
              *([f"trainer.batch_size={args.batch_size}"] if args.batch_size else []), *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="llmlab-bench-"))
    runs, trainers = {}, {}
    for variant in VARIANTS:
        cfg = compose_run_config([*common, f"monitors={variant}", f"cache_dir={work / 'cache'}"], work / variant)
        runs[variant] = Run(cfg)
        trainers[variant] = runs[variant].setup()
    device = runs["none"].device
    for variant in VARIANTS:
        trainers[variant].fit(until=args.warmup)
    seconds = {v: [] for v in VARIANTS}
    backlog = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for variant in order:
            trainer = trainers[variant]
            sync(device)
            start = time.perf_counter()
            trainer.fit(until=args.warmup + (r + 1) * args.block)
            sync(device)
            seconds[variant].append(time.perf_counter() - start)
            start = time.perf_counter()
            if trainer.monitors.ctx is not None:
                trainer.monitors.ctx.worker.flush()
            backlog[variant].append(time.perf_counter() - start)
        if (r + 1) % 5 == 0 or r + 1 == rounds:
            print(f"{(r + 1) * args.block}/{args.steps} steps: " + ", ".join(
                f"{v} {sum(seconds[v]):.1f}s" for v in VARIANTS), flush=True)
    losses = {v: trainers[v].last_train_loss for v in VARIANTS}
    summaries = {v: runs[v].close() for v in VARIANTS}
    base = sum(seconds["none"])
    result = {
        "benchmark": "monitors",
        "model": args.model, "params": runs["none"].params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "batch_size": trainers["none"].cfg.batch_size, "context_length": runs["none"].cfg.model.context_length,
        "block_steps": args.block, "timed_steps_per_variant": args.steps,
        "losses_identical": len(set(losses.values())) == 1,
        "variants": {},
    }
    ratios = {v: [s / b for s, b in zip(seconds[v], seconds["none"], strict=True)] for v in VARIANTS}
    for v in VARIANTS:
        total = sum(seconds[v])
        result["variants"][v] = {
            "seconds": total,
            "step_ms": 1000 * total / args.steps,
            "ratio": total / base,
            "ratio_with_backlog": (total + sum(backlog[v])) / (base + sum(backlog["none"])),
            "median_block_ratio": statistics.median(ratios[v]),
            # spread of per-block ratios: noise, plus the blocks that hold a capture
            "block_ratio_std": statistics.stdev(ratios[v]) if len(ratios[v]) > 1 else None,
            "backlog_s": sum(backlog[v]),
            "dropped_jobs": summaries[v].get("dropped_jobs", 0),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{args.model} ({result['params']:,} params) on {result['device_name'] or device}, batch "
          f"{result['batch_size']}, {args.steps} steps per variant in blocks of {args.block}; losses identical: "
          f"{result['losses_identical']}")
    print("| monitors | ms/step | ratio | ratio incl. backlog | dropped |\n|---|---|---|---|---|")
    for v, row in result["variants"].items():
        print(f"| {v} | {row['step_ms']:.1f} | {row['ratio']:.4f} | {row['ratio_with_backlog']:.4f} | "
              f"{row['dropped_jobs']} |")
    print(f"written to {out}")
    return result
