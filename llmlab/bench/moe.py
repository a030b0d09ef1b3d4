"""Mixture of experts against dense: training step time of a MoE model and the dense models with its active and
with its total parameters, in one process, steps interleaved.

The models are experiments/moe_vs_dense's (conf/experiment/moe_vs_dense/*.yaml over model=tiny, n_layers 2,
vocab --vocab): dense (SwiGLU width 352), moe (8 experts of width 176, top 2: dense's active parameters) and
dense_wide (width 1408: moe's total parameters). A step is forward + backward + the trainer's AdamW, fp32, on one
random batch; the models take turns step by step, so a machine that gets busier slows all of them alike. Each
model's step time is the median of --steps timed steps after --warmup; `ratio_to_dense` divides by dense's.
Written to bench/moe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from llmlab.bench.scaling import step_seconds

VARIANTS = ("dense", "moe", "dense_wide")


def model_config(variant: str, vocab: int):
    """The study's model: conf/model/tiny.yaml + conf/arch/llama.yaml + the experiment's and the variant's fields."""
    from omegaconf import OmegaConf

    from llmlab.config.schema import ModelConfig
    from llmlab.store import CONF_DIR

    fields = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml")),
              **OmegaConf.to_container(OmegaConf.load(CONF_DIR / "arch" / "llama.yaml"))}
    study = OmegaConf.load(CONF_DIR / "experiment" / "moe_vs_dense.yaml")
    variant_cfg = OmegaConf.load(CONF_DIR / "experiment" / "moe_vs_dense" / f"{variant}.yaml")
    merged = OmegaConf.merge(fields, {"n_layers": study.model.n_layers}, variant_cfg.model)
    return ModelConfig(**OmegaConf.to_container(merged), vocab_size=vocab)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (the default run's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=64, help="vocabulary (the embedded language's char scale)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", default="bench/moe.json")


def main(args: argparse.Namespace) -> None:
    from llmlab.config.schema import TrainerConfig
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    models, optimizers = {}, {}
    for name in VARIANTS:
        models[name] = Transformer(model_config(name, args.vocab)).to(device).train()
        optimizers[name] = build_optimizer(models[name], TrainerConfig(optimizer="adamw"), device)
    length = models["dense"].cfg.context_length
    ids = torch.randint(0, args.vocab, (args.batch, length + 1), device=device)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup + args.steps):
        for name in VARIANTS:  # interleaved: load changes hit every model alike
            sync()
            start = time.perf_counter()
            step_seconds(models[name], optimizers[name], ids[:, :-1], ids[:, 1:])
            sync()  # on a GPU the step ends when its kernels do
            times[name].append(time.perf_counter() - start)
    results = {}
    for name in VARIANTS:
        model, timed = models[name], times[name][args.warmup:]
        step = statistics.median(timed)
        results[name] = {"params": model.num_params(), "active_params": model.active_params(),
                         "flops_per_token": model.flops_per_token(), "step_ms": step * 1000,
                         "step_ms_all": [t * 1000 for t in timed],
                         "tokens_per_s": args.batch * length / step}
    for name in VARIANTS:
        results[name]["ratio_to_dense"] = results[name]["step_ms"] / results["dense"]["step_ms"]
        r = results[name]
        print(f"{name}: {r['params']:,} params ({r['active_params']:,} active), {r['step_ms']:.1f} ms/step, "
              f"{r['ratio_to_dense']:.2f}x dense")
    report = {"what": "forward + backward + AdamW step, fp32, median of timed steps, models interleaved in one "
                      "process", "device": args.device, "threads": torch.get_num_threads(), "load_avg_1m": load,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "batch": args.batch, "context_length": length, "steps": args.steps, "warmup": args.warmup,
              "models": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
