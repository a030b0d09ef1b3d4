"""Muon's optimizer step on this device: Newton-Schulz in bfloat16 or float32, 5 or fewer iterations, one matrix at
a time or batched by shape, against AdamW's step, side by side.

One model (the time-to-loss benchmark's: 4 layers, width 128, Llama style) and one set of gradients; each variant
is an optimizer built over that model, stepped `--steps` times, the variants taking turns in each round so a
change in the machine's load falls on all of them alike. The figure is each variant's median milliseconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

VARIANTS = {  # name: (optimizer, ns_dtype, ns_steps, batched)
    "adamw": ("adamw", "bf16", 5, False),
    "muon_bf16": ("muon", "bf16", 5, False),  # torch.optim.Muon as it comes
    "muon_fp32": ("muon", "fp32", 5, False),
    "muon_fp32_batched": ("muon", "fp32", 5, True),
    "muon_bf16_batched": ("muon", "bf16", 5, True),
    "muon_bf16_batched_ns4": ("muon", "bf16", 4, True),
    "muon_bf16_batched_ns3": ("muon", "bf16", 3, True),
    "muon_fp32_batched_ns3": ("muon", "fp32", 3, True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the variants take turns in each")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="bench/muon_step.json")


def build(name: str, model):
    import torch

    from llmlab.config.schema import MuonConfig, TrainerConfig
    from llmlab.train.optim import build_optimizer

    optimizer, dtype, steps, batched = VARIANTS[name]
    cfg = TrainerConfig(optimizer=optimizer, muon=MuonConfig(ns_dtype=dtype, ns_steps=steps, ns_batched=batched))
    return build_optimizer(model, cfg, torch.device("cpu"))


def main(args: argparse.Namespace) -> dict:
    import torch

    from llmlab.config.schema import ModelConfig
    from llmlab.model.transformer import Transformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=4, n_heads=4, d_model=128, context_length=64, vocab_size=103))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {name: build(name, model) for name in VARIANTS}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    load = [os.getloadavg()[0]]
    with torch.no_grad():
        snapshot = [p.detach().clone() for p in model.parameters()]
        for r in range(args.rounds):
            for name in list(VARIANTS)[r % len(VARIANTS):] + list(VARIANTS)[:r % len(VARIANTS)]:
                for _ in range(args.steps):
                    start = time.perf_counter()
                    optimizers[name].step()
                    times[name].append((time.perf_counter() - start) * 1e3)
                for p, s in zip(model.parameters(), snapshot, strict=True):  # every variant steps the same weights
                    p.copy_(s)
            load.append(os.getloadavg()[0])
    ms = {name: statistics.median(t) for name, t in times.items()}
    result = {"benchmark": "muon-step", "model": "4 layers, width 128, 4 heads, Llama style (SwiGLU)",
              "threads": args.threads, "torch": torch.__version__, "steps_per_round": args.steps,
              "rounds": args.rounds, "median_ms": ms,
              "vs_muon_bf16": {name: ms[name] / ms["muon_bf16"] for name in ms},
              "load_avg_range": [min(load), max(load)], "variants": {k: list(v) for k, v in VARIANTS.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_ms": ms, "load": result["load_avg_range"]}, indent=2))
    print(f"wrote {out}")
    return result
