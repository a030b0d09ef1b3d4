"""`data=hf` and `data=mix` sources tokenized into shards, once: what `python -m llmlab.prepare` and the first
run write, and what every later run verifies and memory-maps.

A source's shards live under <cache_dir>/shards/<key>/, the key hashing the source's fingerprint (its files or
dataset fingerprint, split and split rule), the text column, the tokenizer's files and the shard size: change any
of them and the source is tokenized again into a new directory; nothing earlier is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.config.errors import ConfigError
from llmlab.config.schema import HFDataConfig, HFSourceConfig, MixDataConfig
from llmlab.data.hf import OpenedSource, check_field, open_source
from llmlab.data.pipeline import tokenizer_fingerprint
from llmlab.data.shards import (
    FORMAT,
    MANIFEST,
    STREAMS,
    Job,
    ShardedTokens,
    default_processes,
    plan,
    rows_of,
    shard_dtype,
    write_shards,
)
from llmlab.data.stats import bigram_loss, unigram_loss
from llmlab.data.tokenizers import Tokenizer
from llmlab.files import publishing, write_atomic

# The baselines are fitted on at most the first STATS_TOKENS training tokens and scored on at most the first
# STATS_VAL_TOKENS validation tokens: their memory (int64 copies, the bigram's sorted pairs) stays bounded.
STATS_TOKENS = 4_000_000
STATS_VAL_TOKENS = 1_000_000


@dataclass
class PreparedSource:
    name: str
    weight: float  # its share of training windows (1 for data=hf)
    train: ShardedTokens
    val: ShardedTokens
    stats: dict  # its dataset_stats.json
    directory: Path


def sources_of(data: HFDataConfig | MixDataConfig) -> list[tuple[HFSourceConfig, float]]:
    if isinstance(data, MixDataConfig):
        return [(s, s.weight) for s in data.sources]
    return [(data, 1.0)]


def tokenizer_sample(data: HFDataConfig | MixDataConfig, cache_dir: Path) -> str:
    """The text a tokenizer learns from: the first training rows of each source, up to data.sample_chars
    characters in all (shared by weight), joined by newlines as the text path joins documents."""
    pairs = sources_of(data)
    total = sum(w for _, w in pairs)
    texts = []
    for src, weight in pairs:
        opened = open_source(src, cache_dir)
        check_field(opened.train, src.text_field, f"data.path={src.path}")
        budget, size, i = data.sample_chars * weight / total, 0, 0
        rows = opened.train.select_columns([src.text_field])
        while size < budget and i < len(rows):
            for text in rows[i:i + 1000][src.text_field]:
                if isinstance(text, str) and (not opened.period or (i + 1) % opened.period):
                    texts.append(text)
                    size += len(text) + 1
                i += 1
                if size >= budget:
                    break
    return "\n".join(texts)


def saved_tokenizer(tokenizer: Tokenizer, root: Path) -> tuple[str, Path]:
    """The tokenizer's fingerprint (as the token caches key it) and a saved copy the tokenizing processes load."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        key = hashlib.sha256(tokenizer_fingerprint(Path(tmp)).encode()).hexdigest()
    directory = root / f"tokenizer-{key[:16]}"
    if not directory.is_dir():
        with publishing(directory) as tmp:
            tokenizer.save(tmp)
    return key, directory


def prepare_sources(data: HFDataConfig | MixDataConfig, tokenizer: Tokenizer, cache_dir: Path,
                    progress: bool = True) -> list[PreparedSource]:
    """Every source's shards, written where missing or damaged, verified, memory-mapped."""
    root = cache_dir / "shards"
    key, tokenizer_dir = saved_tokenizer(tokenizer, root)
    processes = data.num_proc or default_processes()
    prepared = []
    for src, weight in sources_of(data):
        opened = open_source(src, cache_dir)
        prepared.append(prepare_source(opened, src, weight, tokenizer, key, tokenizer_dir, root, data.shard_docs,
                                       processes, progress))
    return prepared


def prepare_source(opened: OpenedSource, src: HFSourceConfig, weight: float, tokenizer: Tokenizer, tokenizer_key: str,
                   tokenizer_dir: Path, root: Path, shard_docs: int, processes: int, progress: bool) -> PreparedSource:
    where = f"data.path={src.path}"
    for ds in (opened.train, opened.val):
        if ds is not None:
            check_field(ds, src.text_field, where)
    key = hashlib.sha256("\0".join([FORMAT, opened.fingerprint, src.text_field, tokenizer_key,
                                    str(shard_docs)]).encode()).hexdigest()[:24]
    directory = root / key
    records = write_shards(source_jobs(opened, src.text_field, tokenizer_dir, directory, shard_docs), directory,
                           processes, progress)
    dtype = shard_dtype(tokenizer.vocab_size)
    files = {s: [r["files"][s] for r in records if s in r["files"]] for s in STREAMS}
    streams = {s: ShardedTokens([directory / f["file"] for f in files[s]], dtype) for s in STREAMS}
    for s in STREAMS:
        if len(streams[s]) == 0:
            rule = (f"the validation split {src.val_split} is empty" if opened.val is not None else
                    f"the {src.split} split has {len(opened.train)} rows, and every {opened.period}th validates")
            raise ConfigError(f"{where}: no {'training' if s == 'train' else 'validation'} tokens ({rule})")
    manifest = {"format": FORMAT, "source": opened.name, "source_fingerprint": opened.fingerprint,
                "text_field": src.text_field, "tokenizer_sha256": tokenizer_key, "vocab_size": tokenizer.vocab_size,
                "dtype": dtype.name, "shard_docs": shard_docs, "streams": files}
    written = read_manifest(directory)
    if written is not None and {k: written.get(k) for k in manifest} == manifest and "stats" in written:
        return PreparedSource(opened.name, weight, streams["train"], streams["val"], written["stats"], directory)
    train_sample, val_sample = streams["train"][:STATS_TOKENS], streams["val"][:STATS_VAL_TOKENS]
    stats = {
        "name": opened.name,
        "train_documents": sum(f["documents"] for f in files["train"]),
        "val_documents": sum(f["documents"] for f in files["val"]),
        "train_characters": sum(f["characters"] for f in files["train"]),
        "val_characters": sum(f["characters"] for f in files["val"]),
        "train_tokens": len(streams["train"]), "val_tokens": len(streams["val"]),
        "unigram_loss": unigram_loss(train_sample, val_sample, tokenizer.vocab_size),
        "bigram_loss": bigram_loss(train_sample, val_sample, tokenizer.vocab_size),
        "baseline_tokens": [len(train_sample), len(val_sample)],  # what the baselines were fitted and scored on
    }
    write_atomic(directory / "dataset_stats.json", json.dumps(stats, indent=2))
    write_atomic(directory / MANIFEST, json.dumps({**manifest, "stats": stats}, indent=1))  # last: complete
    return PreparedSource(opened.name, weight, streams["train"], streams["val"], stats, directory)


def source_jobs(opened: OpenedSource, field: str, tokenizer_dir: Path, directory: Path, shard_docs: int) -> list[Job]:
    """The source's parts as jobs for the tokenizing processes (only the text column travels)."""
    parts = plan(len(opened.train), None if opened.val is None else len(opened.val), shard_docs)
    rows = {"train": rows_of(opened.train, field)}
    if opened.val is not None:
        rows["val"] = rows_of(opened.val, field)
    return [Job(p, rows[p.split], field, opened.period if p.split == "train" else 0, str(tokenizer_dir),
                str(directory), opened.name) for p in parts]


def read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


UNKNOWN_WARNING = 0.05  # a source more unknown than this was mostly unseen by the tokenizer's sample


def unknown_warnings(prepared: list[PreparedSource], unk_id: int | None) -> list[str]:
    """A line per source whose first training tokens are more than UNKNOWN_WARNING the tokenizer's unknown token
    (its text is not in what the tokenizer learnt from: another script, rows unlike the first ones)."""
    if unk_id is None:
        return []
    lines = []
    for p in prepared:
        sample = np.asarray(p.train[:STATS_TOKENS])
        share = float((sample == unk_id).mean()) if len(sample) else 0.0
        if share > UNKNOWN_WARNING:
            lines.append(f"{p.name}: {share:.0%} of its tokens are the tokenizer's unknown token (of the first "
                         f"{len(sample):,}); the tokenizer learnt from too little of its text: raise "
                         "data.sample_chars, give it more weight, or use tokenizer=bpe (byte fallback: no unknowns)")
    return lines


def combined_stats(prepared: list[PreparedSource], tokenizer: Tokenizer, from_cache: bool) -> dict:
    """dataset_stats.json of a run: each source's own, and the baselines weighted as the windows are drawn."""
    total = sum(p.weight for p in prepared)
    share = [p.weight / total for p in prepared]
    return {
        "sources": [{**p.stats, "weight": p.weight, "share": s, "shards": str(p.directory)}
                    for p, s in zip(prepared, share)],
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "from_cache": from_cache},
        "train_tokens": sum(len(p.train) for p in prepared),
        "val_tokens": sum(len(p.val) for p in prepared),
        "unigram_loss": sum(s * p.stats["unigram_loss"] for p, s in zip(prepared, share)),
        "bigram_loss": sum(s * p.stats["bigram_loss"] for p, s in zip(prepared, share)),
        "entropy_floor": None,
    }
