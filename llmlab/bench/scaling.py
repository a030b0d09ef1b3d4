"""Throughput vs size: training tokens/s and peak memory of the tiny, small and medium presets and GPT-2 124M.

Each size runs in a fresh subprocess (`python -m llmlab.bench.scaling --one <size>`), so the process's peak
resident set (ru_maxrss) belongs to that size alone; `model_mem_mb` is that peak minus the resident set just
before the model was built, after one step of a toy model (interpreter, imports and kernel code excluded): the
weights, gradients, AdamW state and the step's activations. A step is forward + backward + AdamW (the
trainer's fused optimizer), fp32, on one random batch; tokens/s is batch x context / the median of --steps
timed steps after --warmup. The llmlab presets use a --vocab of 256 (the char/byte tokenizers' scale);
gpt2_124m keeps GPT-2's 50257, whose embedding is a third of its parameters. Written to bench/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

# model preset, arch preset, batch: a step of each takes at most a few seconds on 2 CPU cores
SIZES = {
    "tiny": ("tiny", "llama", 32),  # the default run: model=tiny, trainer.batch_size=32
    "small": ("small", "llama", 8),
    "medium": ("medium", "llama", 2),
    "gpt2_124m": ("gpt2_124m", "gpt2", 1),
}
GPT2_VOCAB = 50257


def model_config(size: str, vocab: int, context_length: int | None = None):
    """The ModelConfig of conf/model/<preset>.yaml + conf/arch/<arch>.yaml: the shapes a run composes."""
    from omegaconf import OmegaConf

    from llmlab.config.schema import ModelConfig
    from llmlab.store import CONF_DIR

    preset, arch, _ = SIZES[size]
    fields = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml")),
              **OmegaConf.to_container(OmegaConf.load(CONF_DIR / "arch" / f"{arch}.yaml"))}
    if context_length:
        fields["context_length"] = context_length
    return ModelConfig(**fields, vocab_size=vocab)


def step_seconds(model, optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One training step's wall time: forward, loss, backward, AdamW."""
    start = time.perf_counter()
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure_one(size: str, steps: int, warmup: int, vocab: int, gpt2_context: int, batch: int | None) -> dict:
    """Run in its own process: the peak memory is this size's alone."""
    from llmlab.bench.soak import current_rss_mb
    from llmlab.config.schema import TrainerConfig
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    gpt2 = size == "gpt2_124m"
    cfg = model_config(size, GPT2_VOCAB if gpt2 else vocab, gpt2_context if gpt2 else None)
    batch = batch or SIZES[size][2]
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1))
    # One step of a toy model of the same arch first: the kernels' code and thread pools it pages in
    # (some hundreds of MB, the same for every size) then count as before the model, not as the model.
    toy = Transformer(replace(cfg, n_layers=1, d_model=16, n_heads=2, n_kv_heads=None, d_ff=None))
    adamw = TrainerConfig(optimizer="adamw")  # the step the README's figures time
    step_seconds(toy, build_optimizer(toy, adamw, torch.device("cpu")), ids[:, :-1], ids[:, 1:])
    del toy
    before_mb = current_rss_mb()
    model = Transformer(cfg).train()
    optimizer = build_optimizer(model, adamw, torch.device("cpu"))
    times = [step_seconds(model, optimizer, ids[:, :-1], ids[:, 1:]) for _ in range(warmup + steps)][warmup:]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    step = statistics.median(times)
    return {"params": model.num_params(), "batch": batch, "context_length": cfg.context_length,
            "vocab_size": cfg.vocab_size, "arch": SIZES[size][1], "step_ms": step * 1000,
            "step_ms_all": [t * 1000 for t in times], "tokens_per_s": batch * cfg.context_length / step,
            "tokens_per_s_best": batch * cfg.context_length / min(times),  # the step least slowed by other work
            "peak_mem_mb": peak_mb, "rss_before_model_mb": before_mb, "model_mem_mb": peak_mb - before_mb}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every size (default: SIZES)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary of the llmlab presets")
    parser.add_argument("--gpt2-context", type=int, default=1024, help="gpt2_124m's sequence length")
    parser.add_argument("--out", default="bench/scaling.json")
    parser.add_argument("--one", choices=list(SIZES), help=argparse.SUPPRESS)  # the subprocess: print one size


def main(args: argparse.Namespace) -> None:
    if args.one:
        print(json.dumps(measure_one(args.one, args.steps, args.warmup, args.vocab, args.gpt2_context, args.batch)))
        return
    load = os.getloadavg()[0]  # anything else on the cores slows the steps: a busy machine shows here
    results = {}
    for size in args.sizes:
        command = [sys.executable, "-m", "llmlab.bench.scaling", "--one", size, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--vocab", str(args.vocab), "--gpt2-context", str(args.gpt2_context),
                   *(["--batch", str(args.batch)] if args.batch else [])]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[size] = {**json.loads(done.stdout.splitlines()[-1]), "wall_s": time.perf_counter() - start}
        r = results[size]
        print(f"{size}: {r['params'] / 1e6:.2f}M params, batch {r['batch']} x {r['context_length']}, "
              f"{r['step_ms']:.0f} ms/step, {r['tokens_per_s']:,.0f} tok/s, peak {r['peak_mem_mb']:,.0f} MB "
              f"(model {r['model_mem_mb']:,.0f} MB)")
    report = {"what": "forward + backward + fused AdamW step, fp32, median of timed steps, one process per size",
              "device": "cpu", "threads": torch.get_num_threads(), "load_avg_1m": load,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "steps": args.steps, "warmup": args.warmup, "gpt2_context": args.gpt2_context, "sizes": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m llmlab.bench.scaling", description=__doc__)
    add_arguments(cli)
    main(cli.parse_args())
