"""What a run's data was: each source's name and a checksum of what it gave the run, and one checksum of them all.

A run records it in dataset_stats.json, in every checkpoint's manifest and in val_windows.json, so a resume or an
evaluation on data that changed since (a corpus edited, LLMLAB_DATA_DIR pointed elsewhere, shards prepared from
another dataset) is one line instead of a silent change of the loss. Checksums are of the text or records the
source produced (or, for token shards, of the shard manifest's checksums: the shards are not read again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.config.errors import ConfigError


def digest_of(value: Any, digest: Any | None = None) -> Any:
    """Feed a value of plain data (strings, numbers, arrays, sequences, mappings, dataclasses) into a sha256."""
    digest = digest if digest is not None else hashlib.sha256()
    if isinstance(value, str):
        digest.update(b"s%d:" % len(value.encode()) + value.encode())
    elif isinstance(value, bytes):
        digest.update(b"b%d:" % len(value) + value)
    elif isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype.str}{value.shape}:".encode() + np.ascontiguousarray(value).tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest_of({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, digest)
    elif isinstance(value, dict):
        digest.update(b"d%d:" % len(value))
        for key in sorted(value, key=str):
            digest_of(str(key), digest)
            digest_of(value[key], digest)
    elif isinstance(value, list | tuple) and value and all(type(v) is int for v in value):
        digest_of(np.asarray(value, dtype=np.int64), digest)  # token ids: one update, not one per id
    elif isinstance(value, list | tuple):
        digest.update(b"l%d:" % len(value))
        for item in value:
            digest_of(item, digest)
    elif hasattr(value, "tolist"):  # a tensor or a numpy scalar
        digest_of(np.asarray(value.tolist()), digest)
    else:
        digest.update(f"v{value!r};".encode())
    return digest


def source_record(name: str, *parts: Any) -> dict:
    return {"name": name, "sha256": digest_of(list(parts)).hexdigest()}


def shard_record(name: str, directory: Path) -> dict:
    """A prepared source's record: the checksum of its shard manifest's source fingerprint and shard checksums."""
    try:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    return source_record(name, manifest.get("source_fingerprint"), manifest.get("streams"))


def fingerprint(sources: Iterable[dict]) -> dict:
    """{"sources": [{name, sha256}], "sha256": of them all}."""
    sources = list(sources)
    return {"sources": sources, "sha256": digest_of([[s["name"], s["sha256"]] for s in sources]).hexdigest()}


def differences(recorded: dict, current: dict) -> str:
    """What differs between two fingerprints, in a few words: the sources added, gone or changed."""
    old = {s["name"]: s["sha256"] for s in recorded.get("sources", [])}
    new = {s["name"]: s["sha256"] for s in current.get("sources", [])}
    said = [f"{n}: changed" for n in new if n in old and old[n] != new[n]]
    said += [f"{n}: new" for n in new if n not in old] + [f"{n}: gone" for n in old if n not in new]
    return ", ".join(said[:3]) + (f" and {len(said) - 3} more" if len(said) > 3 else "") if said else "reordered"


def check_same_data(recorded: dict | None, current: dict | None, where: str, option: str) -> None:
    """ConfigError when the data a checkpoint was trained on (recorded) is not the data now (current). Older
    checkpoints record none, and a stage that reports no fingerprint is not checked."""
    if not recorded or not current or recorded.get("sha256") == current.get("sha256"):
        return
    raise ConfigError(f"the data changed since {where} was written ({differences(recorded, current)}); restore it, "
                      f"or {option} to go on with the data as it is now")
