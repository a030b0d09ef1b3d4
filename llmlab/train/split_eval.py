"""The loss over a whole validation split: every token scored once, in non-overlapping windows.

Periodic evaluations score a fixed sample of windows (fast, the same each time); at the end of a run this scores
every validation token, so a reported loss is not one sample's luck. The per-window sums are kept
(`val_windows.json`): every job of a sweep that shares data, tokenizer and context is scored on the very same
windows, so two jobs' losses can be compared window by window (llmlab.sweep.intervals).

Window i holds the tokens [i*T, (i+1)*T] of one stream: its T targets are the tokens i*T+1 .. (i+1)*T, so every
token but a stream's first is a target exactly once. The last window of a stream is shorter; its missing targets
are IGNORE (causal attention: padding after a position never changes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.config.errors import ConfigError
from llmlab.data.batch import IGNORE, Batch
from llmlab.files import sha256_file, write_atomic
from llmlab.rundir import RunDir


@dataclass
class SplitLoss:
    """Per-window loss sums (nats) and target counts over every token of a validation split."""

    sums: np.ndarray  # float64, one per window
    counts: np.ndarray  # int64, targets per window
    fingerprint: str  # the tokens and the window length: equal fingerprints, the same windows

    @property
    def loss(self) -> float:
        return float(self.sums.sum() / self.counts.sum())

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())


HASH_CHUNK = 1 << 20  # tokens hashed at a time: a sharded stream is read piece by piece, never whole


def split_fingerprint(streams: Sequence[np.ndarray], seq_len: int) -> str:
    """Streams are arrays or anything with len() and [start:stop] slices (sharded token streams)."""
    digest = hashlib.sha256(f"T={seq_len};".encode())
    for stream in streams:
        digest.update(f"n={len(stream)};".encode())
        for start in range(0, len(stream), HASH_CHUNK):
            digest.update(np.ascontiguousarray(stream[start:start + HASH_CHUNK], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def split_windows(streams: Sequence[np.ndarray], seq_len: int, batch_size: int) -> Iterator[Batch]:
    """Batches of non-overlapping windows covering every stream; a window never crosses from one stream into the
    next (a mixture's sources stay apart)."""
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for stream in streams:
        for start in range(0, max(len(stream) - 1, 0), seq_len):
            block = np.asarray(stream[start:start + seq_len + 1], dtype=np.int64)
            inputs, targets = np.zeros(seq_len, np.int64), np.full(seq_len, IGNORE, np.int64)
            inputs[:len(block) - 1], targets[:len(block) - 1] = block[:-1], block[1:]
            rows.append((inputs, targets))
            if len(rows) == batch_size:
                yield stack(rows)
                rows = []
    if rows:
        yield stack(rows)


def stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    return Batch(torch.from_numpy(np.stack([r[0] for r in rows])), torch.from_numpy(np.stack([r[1] for r in rows])))


@torch.no_grad()
def split_loss(model: torch.nn.Module, streams: Sequence[np.ndarray], seq_len: int, batch_size: int,
               device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
               ) -> SplitLoss:
    """Score every window of the streams with model (eval mode for the duration; its mode is restored)."""
    if not any(len(s) > 1 for s in streams):
        raise ConfigError("the validation split holds fewer than two tokens: nothing to score")
    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for batch in split_windows(streams, seq_len, batch_size):
            inputs, targets = batch.input_ids.to(device), batch.targets.to(device)
            with autocast():
                logits = model(inputs)
            losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                     reduction="none").view(targets.shape)
            sums.append(losses.sum(dim=1).double().cpu())
            counts.append((targets != IGNORE).sum(dim=1).cpu())
    finally:
        model.train(was_training)
    return SplitLoss(torch.cat(sums).numpy(), torch.cat(counts).numpy().astype(np.int64),
                     split_fingerprint(streams, seq_len))


def write_windows(out: Path, result: SplitLoss, checkpoint: str, data: dict | None = None) -> str:
    """val_windows.json in the run directory; its sha256 (metrics.json records it, so a reader can verify it).
    data: the run's data fingerprint (llmlab.data.fingerprint), its sources and their checksums."""
    path = RunDir(out).val_windows
    write_atomic(path, json.dumps({"fingerprint": result.fingerprint, "checkpoint": checkpoint,
                                   **({"data": data} if data else {}),
                                   "loss": result.loss, "tokens": result.tokens,
                                   "sums": [round(float(s), 6) for s in result.sums],
                                   "counts": result.counts.tolist()}))
    return sha256_file(path)


def read_windows(run_dir: Path, sha256: str | None) -> tuple[SplitLoss | None, str]:
    """A run's per-window losses, verified against the checksum its metrics.json recorded; None and why not."""
    path = RunDir(run_dir).val_windows
    if not path.is_file():
        return None, ""
    if sha256 is None:
        return None, f"{path.name} has no checksum in metrics.json"
    if sha256_file(path) != sha256:
        return None, f"{path.name} does not match the checksum in metrics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        sums, counts = np.asarray(record["sums"], np.float64), np.asarray(record["counts"], np.int64)
        fingerprint = str(record["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{path.name} is not readable ({type(err).__name__})"
    if sums.shape != counts.shape or sums.ndim != 1 or not len(sums) or (counts <= 0).any():
        return None, f"{path.name} holds no per-window sums and counts of equal length"
    return SplitLoss(sums, counts, fingerprint), ""
