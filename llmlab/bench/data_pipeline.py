"""Data pipeline: batches/s from the memory-mapped token stream vs the training step's need, and tokenizer
training and encoding time per kind.

Batches: `TrainBatches` draws random windows from --tokens random uint16 tokens written to a temporary file and
memory-mapped as llmlab.data.pipeline's `cached_token_stream` does (just written, so from the page cache), including
the `.to(device)` copy; a training step (forward + backward + the trainer's AdamW, shape from conf/model) of the
same batch is timed beside it. headroom = step_ms / data_ms_per_batch: how many times faster data comes than steps
use it.

Tokenizers: --text-mb MB (10^6 characters, ASCII) of the synthetic language, joined as the runner joins it,
each kind trained with `build_tokenizer` into an empty temporary cache, then the documents encoded with
`encode_documents` (the token-stream path). Sentencepiece kinds train on the first --train-mb MB when given
(`trained_on_mb`); the tokenizer itself thins texts over 10M characters to about 10M. Written to bench/data.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {"tiny": 32, "small": 8, "medium": 2}  # batch per conf/model preset; tiny's is trainer.batch_size's default
KINDS = ("char", "byte", "bpe", "unigram")


def batch_rates(size: str, batch: int, tokens: np.ndarray, args: argparse.Namespace) -> dict:
    from llmlab.bench.scaling import model_config, step_seconds
    from llmlab.config.schema import TrainerConfig
    from llmlab.data.dataset import TrainBatches
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    device = torch.device("cpu")
    cfg = model_config(size, args.vocab)
    batches = TrainBatches(tokens, batch, cfg.context_length, seed=0)
    for _ in range(10):
        batches.next()
    start = time.perf_counter()
    for _ in range(args.batches):
        x, y = batches.next()
        x, y = x.to(device), y.to(device)
    data_ms = (time.perf_counter() - start) * 1000 / args.batches

    torch.manual_seed(0)
    model = Transformer(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainerConfig(), device)
    times = [step_seconds(model, optimizer, *batches.next()) for _ in range(args.warmup + args.steps)]
    step_ms = statistics.median(times[args.warmup:]) * 1000
    return {"batch": batch, "context_length": cfg.context_length, "data_ms_per_batch": data_ms,
            "batches_per_s": 1000 / data_ms, "step_ms": step_ms, "headroom": step_ms / data_ms}


def synthetic_docs(mb: float, seed: int = 1234) -> list[str]:
    """Documents of the synthetic language whose newline-joined text is at most mb x 10^6 characters."""
    from llmlab.data.synthetic import Language, sample_documents

    docs, size, limit, chunk = [], -1, int(mb * 1e6), 0
    while True:
        for doc in sample_documents(Language(), 10_000, seed=seed + chunk)[0]:
            if size + 1 + len(doc) > limit:
                return docs
            docs.append(doc)
            size += 1 + len(doc)
        chunk += 1


def tokenizer_times(kind: str, docs: list[str], train_docs: list[str]) -> dict:
    from omegaconf import OmegaConf

    from llmlab.config.schema import TokenizerConfig
    from llmlab.data.pipeline import encode_documents
    from llmlab.data.tokenizers import _TRAIN_CHARS, build_tokenizer
    from llmlab.store import CONF_DIR

    fields = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "tokenizer" / f"{kind}.yaml"))
    text = "\n".join(train_docs)
    with tempfile.TemporaryDirectory() as cache:  # empty: every run trains
        cfg = TokenizerConfig(**fields, cache_dir=cache)
        start = time.perf_counter()
        tokenizer, cached = build_tokenizer(cfg, text)
        train_s = time.perf_counter() - start
    assert not cached
    start = time.perf_counter()
    ids = encode_documents(tokenizer, docs)
    encode_s = time.perf_counter() - start
    chars = sum(map(len, docs))
    thinned = math.ceil(len(text) / _TRAIN_CHARS) if kind in ("bpe", "unigram") else 1  # sentencepiece's stride
    return {"vocab_size": tokenizer.vocab_size, "train_s": train_s, "encode_s": encode_s,
            "encode_mb_per_s": chars / 1e6 / encode_s, "tokens": len(ids), "chars_per_token": chars / len(ids),
            "trained_on_mb": len(text) / thinned / 1e6,
            "round_trip": tokenizer.decode(ids) == "".join(docs)}  # decode drops the eos between documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every shape (default: SHAPES)")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="tokens in the memory-mapped stream")
    parser.add_argument("--batches", type=int, default=200, help="timed batches per shape")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per shape")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--text-mb", type=float, default=10.0, help="text encoded, in 10^6 characters")
    parser.add_argument("--train-mb", type=float, default=None, help="sentencepiece trains on this much (all)")
    parser.add_argument("--out", default="bench/data.json")


def main(args: argparse.Namespace) -> None:
    from llmlab.config.schema import TrainerConfig

    load = os.getloadavg()[0]  # anything else on the cores slows the steps: a busy machine shows here
    batches = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.uint16.bin"
        np.random.default_rng(0).integers(0, args.vocab, args.tokens, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        for size in args.sizes:
            batches[size] = r = batch_rates(size, args.batch or SHAPES[size], tokens, args)
            print(f"data {size} (batch {r['batch']} x {r['context_length']}): {r['data_ms_per_batch']:.3f} ms/batch "
                  f"({r['batches_per_s']:,.0f}/s), step {r['step_ms']:.0f} ms, headroom x{r['headroom']:,.0f}")
        del tokens

    docs = synthetic_docs(args.text_mb)
    train_docs = synthetic_docs(args.train_mb) if args.train_mb else docs  # a prefix of docs
    tokenizers = {}
    for kind in args.kinds:
        tokenizers[kind] = r = tokenizer_times(kind, docs, train_docs if kind in ("bpe", "unigram") else docs)
        print(f"tokenizer {kind} (vocab {r['vocab_size']}): train {r['train_s']:.2f} s on {r['trained_on_mb']:.1f} MB,"
              f" encode {r['encode_s']:.2f} s ({r['encode_mb_per_s']:.1f} MB/s, {r['tokens']:,} tokens), "
              f"round trip {r['round_trip']}")

    report = {"what": "TrainBatches from a memory-mapped uint16 stream vs a forward + backward + AdamW step; "
                      "tokenizer training (build_tokenizer, empty cache) and encode_documents on synthetic text",
              "device": "cpu", "threads": torch.get_num_threads(), "load_avg_1m": load,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "stream_tokens": args.tokens, "default_trainer_batch": TrainerConfig().batch_size,
              "text_mb": sum(map(len, docs)) / 1e6, "documents": len(docs), "batches": batches,
              "tokenizers": tokenizers}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
