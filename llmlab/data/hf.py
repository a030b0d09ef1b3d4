"""Hugging Face `datasets` sources: a save_to_disk directory, data files of a builder, or a hub dataset.

Every form opens as an Arrow-backed, memory-mapped `Dataset` per split, so a corpus of gigabytes is read row range
by row range, never whole. Without a validation split, every round(1 / val_fraction)-th row validates
(llmlab.data.sources.validation_period): a rule that needs no row count and matches the text path's JSONL split.
A hub name is tried only when the hub is reachable; offline it fails at once, in one line.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmlab.config.errors import ConfigError
from llmlab.config.schema import HF_BUILDERS, HFSourceConfig
from llmlab.data.sources import data_path, resolve_paths, searched, validation_period
from llmlab.files import disk_full

if TYPE_CHECKING:
    from datasets import Dataset

BUILDERS = sorted(set(HF_BUILDERS.values()))
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_HOST = ("huggingface.co", 443)


@dataclass
class OpenedSource:
    """A source's rows: the training split, and the validation split or the period of validating rows."""

    name: str  # what the user wrote (data.path), for messages and dataset_stats.json
    train: Dataset
    val: Dataset | None  # None: rows of train with (i + 1) % period == 0 validate
    period: int  # 0 when val is a split of its own
    fingerprint: str  # changes when the rows, the split or the split rule change


def open_source(src: HFSourceConfig, cache_dir: Path) -> OpenedSource:
    """The source's splits; every mistake (missing file, unknown split, offline hub) is one ConfigError line."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(data_path(src.path))
    where = f"data.path={src.path}"
    if local.is_dir():
        splits, origin = from_disk(local, where), f"disk:{local.resolve()}"
    elif local.is_file() or src.path in BUILDERS:
        builder = src.path if src.path in BUILDERS else HF_BUILDERS.get(local.suffix)
        if builder is None:
            raise ConfigError(f"{where}: cannot tell the format of {local.name}; give a file ending in "
                              f"{'|'.join(HF_BUILDERS)}, or data.path=<builder> data.files=[...]")
        files = [local] if local.is_file() else resolve_paths(src.files, "data.files") if src.files else []
        if not files:
            raise ConfigError(f"{where}: give the data files, e.g. data.files='corpus/*.{builder}'")
        splits = from_files(builder, files, cache_dir, where)
        origin = f"files:{builder}:" + ",".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                                for f in files)
    elif looks_like_a_path(src.path):
        raise ConfigError(f"{where}: no such file or directory: {src.path} (looked in {searched()})")
    else:
        splits, origin = from_hub(src, cache_dir, where), f"hub:{src.path}:{src.name}"
    train = split_of(splits, src.split, where, "data.split")
    val = split_of(splits, src.val_split, where, "data.val_split") if src.val_split else None
    period = 0 if val is not None else validation_period(src.val_fraction)
    key = "\0".join([origin, src.split, str(src.val_split), str(period), str(len(train)),
                     getattr(train, "_fingerprint", ""), getattr(val, "_fingerprint", "") if val else ""])
    return OpenedSource(src.path, train, val, period, hashlib.sha256(key.encode()).hexdigest())


def looks_like_a_path(path: str) -> bool:
    """A hub name is owner/name or name; anything with a suffix we read or a path's marks is meant as a file."""
    return (path.startswith((".", "/", "~")) or Path(path).suffix in HF_BUILDERS or path.count("/") > 1
            or os.sep != "/" and os.sep in path)


def from_disk(directory: Path, where: str):
    from datasets import load_from_disk

    if not ((directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file()):
        raise ConfigError(f"{where}: {directory} is a directory but not a save_to_disk dataset; for a folder of "
                          f"data files give data.path=<builder> data.files='{directory}/*.parquet'")
    try:
        return load_from_disk(str(directory))
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{where}: cannot load the dataset at {directory} ({first_line(err)})") from None


def from_files(builder: str, files: list[Path], cache_dir: Path, where: str):
    from datasets import load_dataset

    try:
        return load_dataset(builder, data_files={"train": [str(f) for f in files]},
                            cache_dir=str(cache_dir / "datasets"))
    except Exception as err:  # datasets wraps the reader's error in its own types; say which file and why
        if (full := disk_full(err)) is not None:  # the cache's disk, not the file: say so
            raise OSError(full.errno, full.strerror, str(cache_dir / "datasets")) from None
        raise ConfigError(f"{where}: cannot read {', '.join(f.name for f in files[:3])} as {builder} "
                          f"({first_line(err)})") from None


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (quickly: no retries), or None."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
    except OSError:
        return f"{HUB_HOST[0]} is not reachable"
    return None


def from_hub(src: HFSourceConfig, cache_dir: Path, where: str):
    why = hub_unreachable()
    if why is not None:
        raise ConfigError(f"{where}: not a local file or directory (looked in {searched()}), and the hub is "
                          f"offline ({why}); save_to_disk it where there is a network and give that directory")
    from datasets import load_dataset

    try:
        return load_dataset(src.path, src.name, cache_dir=str(cache_dir / "datasets"))
    except Exception as err:
        if (full := disk_full(err)) is not None:
            raise OSError(full.errno, full.strerror, str(cache_dir / "datasets")) from None
        raise ConfigError(f"{where}: cannot load it from the hub ({first_line(err)})") from None


def split_of(splits, name: str, where: str, field: str) -> Dataset:
    """One split of a DatasetDict; a plain Dataset (save_to_disk of one split) is its train split."""
    from datasets import Dataset

    if isinstance(splits, Dataset):
        if name == "train":
            return splits
        raise ConfigError(f"{field}={name}: {where} is a single split (used as train); drop {field}")
    if name not in splits:
        raise ConfigError(f"{field}={name}: {where} has no such split (it has {', '.join(splits)})")
    return splits[name]


def check_field(ds: Dataset, field: str, where: str, name: str = "data.text_field") -> None:
    if field not in ds.column_names:
        raise ConfigError(f"{name}={field}: {where} has no such column (it has {', '.join(ds.column_names)})")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def records(opened: OpenedSource) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows as dicts, for the chat kinds (conversations are few and small)."""
    rows = list(opened.train)
    if opened.val is not None:
        return rows, list(opened.val)
    period = opened.period
    return [r for i, r in enumerate(rows) if (i + 1) % period], [r for i, r in enumerate(rows) if not (i + 1) % period]
