"""Text to training tokens: a corpus encoded once per (tokenizer, text) into memory-mapped streams, with the
baselines that say how good a loss is on them (dataset_stats.json)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.data.sources import Corpus
from llmlab.data.stats import bigram_loss, entropy_floor, unigram_loss
from llmlab.data.tokenizers import Tokenizer
from llmlab.files import atomic_file, sha256_file, write_atomic

log = logging.getLogger(__name__)


@dataclass
class TokenStreams:
    train: np.ndarray
    val: np.ndarray
    stats: dict


def tokenizer_fingerprint(directory: Path) -> str:
    """What identifies a saved tokenizer: the checksums of its files (the token caches are keyed by it)."""
    return "-".join(sha256_file(p)[:16] for p in sorted(directory.rglob("*")) if p.is_file())


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """Each document's tokens followed by eos, concatenated."""
    eos = np.array([tokenizer.eos_id])
    parts = [p for d in docs for p in (tokenizer.encode_to_array(d), eos)]
    return np.concatenate(parts).astype(tokenizer.dtype) if parts else np.zeros(0, dtype=tokenizer.dtype)


def cached_token_stream(tokenizer: Tokenizer, tokenizer_key: str, docs: list[str], cache_dir: Path) -> np.ndarray:
    """Encode once per (tokenizer, text) and keep the result as a read-only memory map. The cache entry's size
    and sha256 are recorded beside it and checked at every use: a damaged entry is encoded again, with a warning."""
    digest = hashlib.sha256(tokenizer_key.encode())
    for doc in docs:
        digest.update(doc.encode())
        digest.update(b"\x00")
    dtype = tokenizer.dtype
    path = cache_dir / f"{digest.hexdigest()[:24]}.{np.dtype(dtype).name}.bin"
    record = path.with_name(path.name + ".json")
    if path.exists():
        problem = cache_problem(path, record)
        if problem is None:
            return np.memmap(path, dtype=dtype, mode="r")
        log.warning(f"warning: token cache {path} {problem}; encoding the text again")
    tokens = encode_documents(tokenizer, docs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:  # a crash mid-write never leaves a truncated stream under the real name
        tokens.tofile(tmp)
    write_atomic(record, json.dumps({"bytes": path.stat().st_size, "sha256": sha256_file(path)}))
    return np.memmap(path, dtype=dtype, mode="r")


def cache_problem(path: Path, record: Path) -> str | None:
    """What is wrong with a cache entry against its record, or None."""
    try:
        expected = json.loads(record.read_text())
    except (OSError, ValueError):
        return "has no readable checksum record"
    if not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes"):
        return "is not the size it was written with"
    if sha256_file(path) != expected.get("sha256"):
        return "does not match its checksum"
    return None


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
