"""Generation speed: llmlab's greedy decoding with the KV cache, without it, and `transformers`' `generate` on
the same weights (`to_hf`), for --new tokens after a --prompt-token prompt, at each batch size.

The three run interleaved in one process (order rotating), on one model with the tiny preset's width and depth
and a context long enough that no window slides; tokens/s is the median over --repeats. The cached and
transformers continuations must be the same tokens (recorded), so the figures compare the same work.
Written to bench/generation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=256, help="tokens generated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/generation.json")


def main(args: argparse.Namespace) -> None:
    from llmlab.config.schema import ModelConfig
    from llmlab.interop.hf import to_hf
    from llmlab.model.generation import SamplingConfig, generate
    from llmlab.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", n_layers=4, d_model=128, n_heads=4, vocab_size=256,
                      context_length=args.prompt + args.new)
    model = Transformer(cfg).eval()
    hf = to_hf(model).eval()
    results = {}
    for batch in args.batches:
        prompt = torch.randint(0, cfg.vocab_size, (batch, args.prompt))

        def ours(cache: bool) -> torch.Tensor:
            sampling = SamplingConfig(max_new_tokens=args.new, temperature=0.0, use_cache=cache)
            return generate(model, prompt, sampling, torch.Generator())

        def theirs() -> torch.Tensor:
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                               min_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=0)

        runs = {"llmlab_cache": lambda: ours(True), "llmlab_no_cache": lambda: ours(False), "transformers": theirs}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        outputs = {}
        with torch.no_grad():
            for r in range(args.repeats):
                names = list(runs)
                for name in names[r % 3:] + names[: r % 3]:
                    start = time.perf_counter()
                    outputs[name] = runs[name]()
                    seconds[name].append(time.perf_counter() - start)
        tokens_per_s = {name: batch * args.new / statistics.median(s) for name, s in seconds.items()}
        results[f"batch_{batch}"] = {
            "tokens_per_s": tokens_per_s,
            "cache_speedup": tokens_per_s["llmlab_cache"] / tokens_per_s["llmlab_no_cache"],
            "vs_transformers": tokens_per_s["llmlab_cache"] / tokens_per_s["transformers"],
            "same_tokens_as_transformers": torch.equal(outputs["llmlab_cache"], outputs["transformers"]),
            "same_tokens_cached_and_not": torch.equal(outputs["llmlab_cache"], outputs["llmlab_no_cache"]),
        }
        r = results[f"batch_{batch}"]
        print(f"batch {batch}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in tokens_per_s.items())
              + f"; cache x{r['cache_speedup']:.2f}, vs transformers x{r['vs_transformers']:.2f}")
    report = {"what": f"greedy, {args.prompt}-token prompt, {args.new} new tokens, fp32 CPU, median of "
                      f"{args.repeats}", "threads": torch.get_num_threads(), "params": model.num_params(),
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
