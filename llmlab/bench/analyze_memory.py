"""Analyze memory: `llmlab.analyze` on a 1B-parameter Llama (Llama-3.2-1B's shape, random bf16 weights) fits
this machine when layers are chosen.

The model directory is written once (random weights in bf16 with Llama-3.2-1B's config.json and a small
byte-level BPE tokenizer: nothing is downloaded) and reused. Each variant runs `python -m llmlab.analyze` in a
fresh process; its peak resident memory is the kernel's count for that child (wait4's rusage). Compare it with
the fp32 weights alone: gradients of every layer would add as much again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Llama-3.2-1B's config.json, the fields that decide shapes and numerics
LLAMA_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    hidden_act="silu", bos_token_id=0, eos_token_id=1,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default="outputs/.cache/bench/llama-1b-random",
                        help="where the random 1B model is written (once)")
    parser.add_argument("--layers", default="[0,1]", help="the analyze command's layers=")
    parser.add_argument("--out", default="bench/analyze_memory.json")


def write_random_model(directory: Path) -> None:
    """A Llama-3.2-1B-shaped model directory with random bf16 weights."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**LLAMA_1B)
    with torch.device("meta"):  # names and shapes only; the random values are drawn in bf16 below
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)
    weights = {k: (torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02
                   ).to(torch.bfloat16) for k, s in shapes.items()}
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(tmp)
    bpe = ByteLevelBPETokenizer()
    text = ["The model reads a short text about rivers, hills and the people who walk between them."] * 20
    bpe.train_from_iterator(text, vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                            show_progress=False)
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(tmp)
    tmp.rename(directory)


def peak_rss_of(command: list[str]) -> tuple[float, float, str]:
    """(peak resident MB, seconds, last output line) of one child process, from its own rusage (wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0), err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return usage.ru_maxrss / 1024, seconds, out.read().strip().splitlines()[-1]


def main(args: argparse.Namespace) -> None:
    directory = Path(args.model_dir)
    if not (directory / "model.safetensors").is_file():
        print(f"writing a random Llama-3.2-1B-shaped model to {directory} (once)")
        write_random_model(directory)
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    analyze = [sys.executable, "-m", "llmlab.analyze", "model=hf", f"model.path={directory}",
               "text=The river runs between two hills and the people walk along it.", "no_plots=true",
               "out=outputs/.cache/bench/analysis"]
    variants = {"chosen_layers_forward_only": [*analyze, f"layers={args.layers}", "no_gradients=true"],
                "chosen_layers_with_gradients": [*analyze, f"layers={args.layers}"],
                "all_layers_with_gradients": analyze}
    results = {}
    for name, command in variants.items():
        peak, seconds, last = peak_rss_of(command)
        results[name] = {"peak_rss_mb": round(peak), "seconds": round(seconds, 1), "summary": last}
        print(f"{name}: peak {peak:,.0f} MB in {seconds:.0f} s ({last})")
    weights_mb = params * 4 / 2**20
    report = {"model": "Llama-3.2-1B shape, random bf16 weights loaded as fp32", "params": params,
              "fp32_weights_mb": round(weights_mb), "layers": args.layers, **results,
}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{params / 1e9:.2f}B parameters, fp32 weights {weights_mb:,.0f} MB; written to {out}")
