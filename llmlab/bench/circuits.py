"""Circuits capture cost: one capture of the circuits monitor against one training step, in one process.

The model trains with monitors=light (the capture schedule switched off); each round takes one training step and
then one capture (one eval-mode forward of the copy and induction probes with explicit attention, the scores and
the logit lens), so drift in machine speed falls on both. The overhead of light's schedule is capture / (every x
step): what a capture every `every` steps adds to training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="model preset (conf/model)")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (a step and a capture each)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/circuits.json")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. monitors.circuits.copy_rows=16")


def main(args: argparse.Namespace) -> dict:
    from llmlab.runner import Run
    from llmlab.store import compose_run_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run_config(
            [f"model={args.model}", "monitors=light", "monitors.circuits.every=0", "trainer.max_steps=1000000",
             "trainer.eval_every=1000000", "trainer.checkpoint_every=1000000", "trainer.progress=false",
             f"device={args.device}", *([f"trainer.batch_size={args.batch_size}"] if args.batch_size else []),
             *args.overrides], Path(tmp) / "run")
        run = Run(cfg)
        trainer = run.setup()
        try:
            circuits = next(m for m in run.monitors.monitors if m.name == "circuits")
            run.monitors.train_start(0)
            steps, captures = [], []
            for i in range(args.warmup + args.rounds):
                start = time.perf_counter()
                trainer.train_step()
                middle = time.perf_counter()
                circuits.measure()
                end = time.perf_counter()
                if i >= args.warmup:
                    steps.append(middle - start)
                    captures.append(end - middle)
        finally:
            run.close()
    step, capture = statistics.median(steps), statistics.median(captures)
    result = {
        "model": args.model, "batch_size": cfg.trainer.batch_size, "context": cfg.model.context_length,
        "probe_rows": list(circuits.real.shape), "induction_rows": list(circuits.random.shape),
        "step_ms": 1000 * step, "capture_ms": 1000 * capture, "capture_per_step": capture / step,
        "overhead_at_every_100": capture / (100 * step), "rounds": args.rounds,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result
