"""A `transformers` Llama trained by a plain PyTorch loop, watched by llmlab's monitors, and what they cost.

    python experiments/plain_loop_monitors/train.py --steps 300 --out outputs/experiments/plain_loop_monitors

Two copies of the same model (same initial weights, same batches) train side by side in blocks of --block
steps, one bare and one with an AttentionMonitor and a DistributionMonitor capturing every --every steps;
the blocks interleave so machine noise hits both. The overhead is the ratio of their median block times.
Writes <out>/overhead.json and the monitors' files under <out>/attn and <out>/dist.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmlab.data.synthetic import Language, sample_documents
from llmlab.monitors import AttentionMonitor, DistributionMonitor


def byte_batches(steps: int, batch: int, length: int, seed: int) -> list[torch.Tensor]:
    """Random windows of the embedded language as UTF-8 bytes: the same list for both models."""
    docs, _ = sample_documents(Language(), 3000, seed)
    tokens = np.frombuffer("\n".join(docs).encode(), dtype=np.uint8).astype(np.int64)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - length, size=(steps, batch))
    return [torch.from_numpy(np.stack([tokens[s:s + length] for s in row])) for row in starts]


def train_block(model, optimizer, batches, first_step, attn=None, dist=None) -> tuple[float, float]:
    start = time.perf_counter()
    for i, ids in enumerate(batches):
        step = first_step + i
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if dist is not None:
            dist.after_backward(model, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        if attn is not None:
            attn.log(model, ids, step, loss=value)
            dist.log(model, ids, step, loss=value)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--every", type=int, default=100, help="capture period of both monitors")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--out", default="outputs/experiments/plain_loop_monitors")
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)
    bare = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128))
    watched = copy.deepcopy(bare)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (bare, watched)]
    batches = byte_batches(args.steps, args.batch, args.length, seed=0)
    times: dict[str, list[float]] = {"none": [], "monitors": []}
    losses = {}
    with AttentionMonitor(save_dir=out / "attn", every=args.every, layers=[0, -1]) as attn, \
         DistributionMonitor(save_dir=out / "dist", every=args.every, tensorboard=True) as dist:
        for first in range(0, args.steps, args.block):
            block = batches[first:first + args.block]
            order = [("none", bare, optimizers[0], {}), ("monitors", watched, optimizers[1],
                                                           {"attn": attn, "dist": dist})]
            if (first // args.block) % 2:
                order.reverse()  # neither side always runs first
            for name, model, optimizer, monitors in order:
                seconds, losses[name] = train_block(model, optimizer, block, first, **monitors)
                times[name].append(seconds)
        summary = dist.close() | {"attention": attn.close()}  # flushed inside the timed run's lifetime
    medians = {k: statistics.median(v) / args.block * 1000 for k, v in times.items()}
    report = {"steps": args.steps, "block": args.block, "every": args.every, "batch": args.batch,
              "length": args.length, "ms_per_step": medians, "ratio": medians["monitors"] / medians["none"],
              "block_ratios": [round(m / n, 4) for m, n in zip(times["monitors"], times["none"], strict=True)],
              "final_loss": losses, "monitor_jobs": summary}
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
