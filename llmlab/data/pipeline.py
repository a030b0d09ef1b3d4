"""Text to training tokens: a corpus encoded once per (tokenizer, text) into memory-mapped streams, with the
baselines that say how good a loss is on them (dataset_stats.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.data.dataset import cached_token_stream
from llmlab.data.sources import Corpus
from llmlab.data.stats import bigram_loss, entropy_floor, unigram_loss
from llmlab.data.tokenizers import Tokenizer
from llmlab.files import sha256_file


@dataclass
class TokenStreams:
    train: np.ndarray
    val: np.ndarray
    stats: dict


def tokenizer_fingerprint(directory: Path) -> str:
    """What identifies a saved tokenizer: the checksums of its files (the token caches are keyed by it)."""
    return "-".join(sha256_file(p)[:16] for p in sorted(directory.rglob("*")) if p.is_file())


def token_streams(corpus: Corpus, tokenizer: Tokenizer, tokenizer_dir: Path, cache_dir: Path,
                  tokenizer_from_cache: bool) -> TokenStreams:
    """The corpus's train and validation documents as token streams (cached), and their statistics."""
    key = tokenizer_fingerprint(tokenizer_dir)
    train = cached_token_stream(tokenizer, key, corpus.train_docs, cache_dir)
    val = cached_token_stream(tokenizer, key, corpus.val_docs, cache_dir)
    stats = {
        "sources": [
            {"name": s.name, "train_documents": len(s.train_docs), "val_documents": len(s.val_docs),
             "train_characters": sum(map(len, s.train_docs)), "val_characters": sum(map(len, s.val_docs))}
            for s in corpus.sources
        ],
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "from_cache": tokenizer_from_cache},
        "train_tokens": len(train),
        "val_tokens": len(val),
        "unigram_loss": unigram_loss(train, val, tokenizer.vocab_size),
        "bigram_loss": bigram_loss(train, val, tokenizer.vocab_size),
        "entropy_floor": entropy_floor(corpus.val_logprob, len(val)),
    }
    return TokenStreams(train, val, stats)


def decode_documents(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text with one line per document (eos tokens become line breaks)."""
    docs, current = [], []
    for i in ids:
        if i == tokenizer.eos_id:
            docs.append(current)
            current = []
        else:
            current.append(i)
    docs.append(current)
    return "\n".join(tokenizer.decode(d) for d in docs if d)
