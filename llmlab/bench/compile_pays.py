"""After how many steps trainer.compile pays: the same model eager and with compiled blocks
(Transformer.compile_blocks, what trainer.compile=true does), in one process, same weights and batch.

The first compiled step (tracing and compiling, or loading the kernels from --cache-dir when a run before
compiled the same shapes) is timed alone; then both step interleaved, and the figure is
pays_after_steps = (first compiled step - eager step) / (eager step - compiled step). Run it twice with the same
--cache-dir for the cold and the warm start. Written to bench/compile_pays.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps of each after the first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cache-dir", default="outputs/.cache", help="the run's cache_dir: kernels in <it>/inductor")
    parser.add_argument("--out", default="bench/compile_pays.json")


def main(args: argparse.Namespace) -> None:
    from llmlab.bench.vs_transformers import SIZES
    from llmlab.config.schema import ModelConfig, TrainerConfig
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir).resolve() / "inductor"
    warm = cache.exists() and any(cache.iterdir())
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    shape = {k: v for k, v in SIZES[args.size].items() if k != "batch"}
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        models[name] = Transformer(ModelConfig(name=args.size, vocab_size=64, **shape)).train()
    adamw = TrainerConfig(optimizer="adamw")  # the step the README's figures time
    optimizers = {name: build_optimizer(m, adamw, torch.device("cpu")) for name, m in models.items()}
    ids = torch.randint(0, 64, (args.batch_size, shape["context_length"]))

    def step(name: str) -> float:
        start = time.perf_counter()
        logits = models[name](ids)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step("eager")  # allocations, thread pools: not compile's cost
    models["compiled"].compile_blocks()
    first = step("compiled")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(args.repeats):
        for name in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            times[name].append(step(name))
    median = {name: statistics.median(t) for name, t in times.items()}
    saved = median["eager"] - median["compiled"]
    report = {"what": "training step, eager vs compiled blocks, same weights and batch, interleaved medians",
              "size": args.size, "batch": args.batch_size, "threads": torch.get_num_threads(),
              "cache": "warm" if warm else "cold", "first_compiled_step_s": first,
              "ms_per_step": {k: v * 1000 for k, v in median.items()},
              "compiled_over_eager": median["compiled"] / median["eager"],
              "pays_after_steps": (first - median["eager"]) / saved if saved > 0 else None, "torch": torch.__version__}
    print(f"{report['cache']} cache: first compiled step {first:.1f} s; eager {median['eager'] * 1000:.0f} ms, "
          f"compiled {median['compiled'] * 1000:.0f} ms a step; pays after {report['pays_after_steps']} steps")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
