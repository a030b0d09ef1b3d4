"""Soak: a long monitored run whose resident memory must stay flat (no growth from monitors, queues or logs).

The run trains in blocks of `--block` steps; after each block the process's current resident set size
(not the peak) is sampled. Memory settles during the first evaluations, checkpoints and captures, and the
allocator hands memory back now and then, so single samples jump: growth is the median of the last third
of the samples after `--settle` (a fraction of the run) minus the median of the first third.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="model preset (conf/model)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--block", type=int, default=50, help="steps between memory samples")
    parser.add_argument("--every", type=int, default=20, help="monitor capture period (default monitors: 100)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--settle", type=float, default=0.2, help="fraction of the run before growth is measured")
    parser.add_argument("--out", default="bench/soak.json")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")


def current_rss_mb() -> float:
    """Resident memory now, from /proc (Linux); elsewhere the peak, which can only overstate growth."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(args: argparse.Namespace) -> dict:
    if args.steps % args.block:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --block {args.block}")
    with tempfile.TemporaryDirectory(prefix="llmlab-soak-") as work:
        return soak(args, Path(work))


def soak(args: argparse.Namespace, work: Path) -> dict:
    from llmlab.runner import Run
    from llmlab.store import compose_run_config

    every = args.every
    cfg = compose_run_config([
        f"model={args.model}", f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch_size}",
        "trainer.progress=false", "monitors=light", f"monitors.attention.every={every}",
        f"monitors.distribution.every={every}", f"monitors.health.every={every}", f"cache_dir={work / 'cache'}",
        *args.overrides], work / "run")
    run = Run(cfg)
    trainer = run.setup()
    samples, start = [], time.perf_counter()
    for until in range(args.block, args.steps + 1, args.block):
        trainer.fit(until=until)
        samples.append((until, current_rss_mb()))
    seconds = time.perf_counter() - start
    summary = run.close()
    steps, rss = np.array(samples).T
    settled = rss[steps >= args.settle * args.steps]
    third = max(len(settled) // 3, 1)
    early, late = float(np.median(settled[:third])), float(np.median(settled[-third:]))
    result = {
        "benchmark": "soak", "model": args.model, "params": run.params, "torch": torch.__version__,
        "steps": args.steps, "batch_size": args.batch_size, "capture_every": every, "seconds": seconds,
        "captures_per_monitor": args.steps // every,
        "rss_mb": [{"step": int(s), "rss_mb": round(float(r), 1)} for s, r in samples],
        "rss_early_median_mb": early, "rss_late_median_mb": late, "growth_mb": late - early,
        "rss_min_mb": float(rss.min()), "rss_max_mb": float(rss.max()),
        "dropped_jobs": summary.get("dropped_jobs", 0), "completed_jobs": summary.get("completed_jobs", 0),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.model}, {args.steps} steps of batch {args.batch_size}, monitors every {every} steps "
          f"({result['completed_jobs']} jobs, {result['dropped_jobs']} dropped) in {seconds:.0f} s: median RSS "
          f"{early:.0f} MB early -> {late:.0f} MB late ({late - early:+.1f} MB); samples between "
          f"{result['rss_min_mb']:.0f} and {result['rss_max_mb']:.0f} MB")
    print(f"written to {out}")
    return result
