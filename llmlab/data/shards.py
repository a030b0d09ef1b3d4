"""Token shards: a dataset's rows tokenized once, in parallel, into files that training memory-maps.

A source is cut into parts of `shard_docs` consecutive rows. Each part is one unit of work for a process of the
pool: it reads its rows (memory-mapped Arrow, a thousand at a time), writes each document's tokens followed by
eos to its train (and validation) shard under a temporary name, renames them into place and then writes the
part's record (sizes, sha256, documents). Memory stays that of a thousand rows per process, whatever the corpus.

An interrupted preparation resumes part by part: a part whose record exists and whose shards match it is kept,
any other is written again. Encoding is deterministic, so the shards are byte-identical to an uninterrupted run.
The manifest (written last) lists every shard in stream order; each use verifies every shard against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.config.errors import ConfigError
from llmlab.console import STDERR
from llmlab.data.tokenizers import Tokenizer, load_tokenizer
from llmlab.files import atomic_file, disk_full, remove_orphan_temporaries, sha256_file, write_atomic

log = logging.getLogger(__name__)

FORMAT = "llmlab-shards-1"  # part of the shard directory's key: bump it when the layout or encoding changes
MANIFEST = "manifest.json"
ROWS_PER_READ = 1000  # rows a process holds at once
STREAMS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of one split: the train split (its validating rows go to the val shard) or the
    validation split."""

    split: str  # "train" | "val": which dataset the rows come from
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}"


@dataclass(frozen=True)
class ArrowRows:
    """One column of a dataset's Arrow files (the IPC streams `datasets` caches and saves), read by row range with
    pyarrow alone: a tokenizing process starts in a second, not the several `import datasets` takes."""

    files: tuple[tuple[str, int], ...]  # (path, rows) in dataset order
    column: str

    def texts(self, start: int, stop: int) -> Iterator[list]:
        for a in range(start, stop, ROWS_PER_READ):
            yield self.read(a, min(a + ROWS_PER_READ, stop))

    def read(self, start: int, stop: int) -> list:
        """Rows [start, stop) of the column. The files are mapped for this read only: a process keeps no pages of
        them between reads, so its resident memory does not grow with the rows it has read."""
        import pyarrow as pa

        out, offset = [], 0
        for path, rows in self.files:
            if offset < stop and start < offset + rows:
                with pa.memory_map(path) as source:
                    position = offset
                    for batch in pa.ipc.open_stream(source):  # skipping a batch reads its header only
                        lo, hi = max(start, position), min(stop, position + batch.num_rows)
                        if lo < hi:
                            out += batch.column(self.column).slice(lo - position, hi - lo).to_pylist()
                        position += batch.num_rows
                        if position >= stop:
                            break
            offset += rows
        return out


@dataclass(frozen=True)
class DatasetRows:
    """One column of any `datasets.Dataset` (one held in memory, or behind an indices mapping)."""

    dataset: object
    column: str

    def texts(self, start: int, stop: int) -> Iterator[list]:
        for a in range(start, stop, ROWS_PER_READ):
            yield self.dataset[a:min(a + ROWS_PER_READ, stop)][self.column]


def rows_of(dataset, column: str) -> ArrowRows | DatasetRows:
    """The cheapest picklable reader of a dataset's column: its Arrow files when it is exactly their rows."""
    import pyarrow as pa

    files = [f["filename"] for f in dataset.cache_files]
    if files and getattr(dataset, "_indices", None) is None:
        counts = []
        for path in files:
            with pa.memory_map(path) as source:
                counts.append(sum(batch.num_rows for batch in pa.ipc.open_stream(source)))
        if sum(counts) == len(dataset):
            return ArrowRows(tuple(zip(files, counts)), column)
    return DatasetRows(dataset.select_columns([column]), column)


@dataclass(frozen=True)
class Job:
    """What a process needs for one part: everything picklable."""

    part: Part
    rows: ArrowRows | DatasetRows
    field: str
    period: int  # train split: row i validates when (i + 1) % period == 0 (0: none does)
    tokenizer_dir: str
    directory: str
    where: str  # the source as the user named it, for errors


def plan(n_train: int, n_val: int | None, shard_docs: int) -> list[Part]:
    parts = [Part("train", k, a, min(a + shard_docs, n_train)) for k, a in enumerate(range(0, n_train, shard_docs))]
    if n_val is not None:
        parts += [Part("val", k, a, min(a + shard_docs, n_val)) for k, a in enumerate(range(0, n_val, shard_docs))]
    return parts


_TOKENIZERS: dict[str, Tokenizer] = {}


def worker_tokenizer(directory: str) -> Tokenizer:
    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = load_tokenizer(directory)
    return _TOKENIZERS[directory]


def encode_part(job: Job) -> str:
    """Write one part's shards and then its record; returns the part's name."""
    _WRITING.append(job.part.name)  # a SIGTERM now unwinds, removing the part's temporary files
    try:
        return write_part(job)
    finally:
        _WRITING.remove(job.part.name)


def write_part(job: Job) -> str:
    tokenizer = worker_tokenizer(job.tokenizer_dir)
    dtype, eos = shard_dtype(tokenizer.vocab_size), np.array([tokenizer.eos_id])
    directory, part = Path(job.directory), job.part
    streams = STREAMS if part.split == "train" and job.period else (part.split,)
    record: dict = {"part": part.name, "rows": [part.start, part.stop], "files": {}}
    with ExitStack() as stack:
        tmp = {s: stack.enter_context(atomic_file(directory / f"{part.name}.{s}.bin")) for s in streams}
        files = {s: stack.enter_context(open(tmp[s], "wb")) for s in streams}
        digests = {s: hashlib.sha256() for s in streams}
        docs, chars = dict.fromkeys(streams, 0), dict.fromkeys(streams, 0)
        a = part.start
        for texts in job.rows.texts(part.start, part.stop):
            pieces: dict[str, list[np.ndarray]] = {s: [] for s in streams}
            for i, text in enumerate(texts, a):
                if not isinstance(text, str):
                    raise ConfigError(f"data.text_field={job.field}: row {i} of {job.where} ({part.split} split) is "
                                      f"not text (got {type(text).__name__})")
                stream = "val" if part.split == "val" or job.period and not (i + 1) % job.period else "train"
                pieces[stream] += [tokenizer.encode_to_array(text), eos]
                docs[stream] += 1
                chars[stream] += len(text)
            for s, arrays in pieces.items():
                if arrays:
                    data = np.concatenate(arrays).astype(dtype).tobytes()
                    files[s].write(data)
                    digests[s].update(data)
            a += len(texts)
        for s in streams:
            files[s].close()
            record["files"][s] = {"file": f"{part.name}.{s}.bin", "bytes": tmp[s].stat().st_size,
                                  "sha256": digests[s].hexdigest(), "documents": docs[s], "characters": chars[s]}
    write_atomic(directory / f"{part.name}.json", json.dumps(record, indent=1))  # last: the part is complete
    return part.name


def file_problem(directory: Path, entry: dict) -> str | None:
    """What is wrong with a shard against its record entry, or None."""
    path = directory / entry["file"]
    if not path.is_file():
        return "is missing"
    if path.stat().st_size != entry["bytes"]:
        return "is not the size it was written with"
    if sha256_file(path) != entry["sha256"]:
        return "does not match its checksum"
    return None


def part_record(directory: Path, part: Part, warn: bool) -> dict | None:
    """The part's record when it and every shard it lists are intact; a damaged shard is said (warn) and None."""
    try:
        record = json.loads((directory / f"{part.name}.json").read_text())
        entries = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for entry in entries.values():
        problem = file_problem(directory, entry)
        if problem is not None:
            if warn:
                log.warning(f"warning: token shard {directory / entry['file']} {problem}; encoding its rows again")
            return None
    return record


def worker_signals() -> None:
    """A tokenizing process leaves signals to its parent: Ctrl-C (sent to the whole process group) is the parent's
    to handle, and the SIGTERM with which the parent's pool ends its workers unwinds the part being written, so
    its temporary files are removed, instead of killing the process where it stands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop_worker)


_WRITING: list[str] = []  # the part this process is writing, if any


def stop_worker(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM (group and pool both send one) ends it quietly
    if _WRITING:
        sys.exit(1)  # unwinds encode_part: its temporary files are removed
    os._exit(1)  # between parts there is nothing to clean up: end as SIGTERM's default would, without a word


def run_jobs(jobs: list[Job], num_proc: int) -> Iterator[str]:
    """Each job's part name as it finishes: in this process for one process or one job, else in a pool."""
    if num_proc <= 1 or len(jobs) <= 1:
        yield from map(encode_part, jobs)
        return
    # spawn, not fork: the parent may hold torch's threads, which a forked child would inherit half-locked
    with sigint_ignored():  # inherited through exec, so a Ctrl-C while a process still imports leaves it be
        pool = multiprocessing.get_context("spawn").Pool(min(num_proc, len(jobs)), initializer=worker_signals)
    with pool:
        yield from pool.imap_unordered(encode_part, jobs)
        pool.close()  # the workers end on their own; only an interrupted pool is terminated (SIGTERM)
        pool.join()


@contextmanager
def sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_shards(jobs: list[Job], directory: Path, num_proc: int, progress: bool = True) -> list[dict]:
    """Every part's record in plan order, encoding the parts that are missing or damaged."""
    directory.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if part_record(directory, job.part, warn=True) is None]
    if todo:
        done = len(jobs) - len(todo)
        if progress:
            log.info(f"tokenizing {jobs[0].where}: {len(todo)} of {len(jobs)} parts to write"
                     f"{f' ({done} already written)' if done else ''}, {min(num_proc, len(todo))} process(es), "
                     f"into {directory}", extra=STDERR)
        written = run_jobs(todo, num_proc)
        try:
            for n, name in enumerate(written, 1):
                if progress and (n == len(todo) or n % max(1, len(todo) // 10) == 0):
                    log.info(f"  {n}/{len(todo)} parts written ({name})", extra=STDERR)
        except BaseException as err:  # a signal, a full disk: the pool ends its workers, then what they left is removed
            written.close()
            remove_orphan_temporaries(directory)
            full = disk_full(err)
            if full is not None and not full.filename:  # a write's error names no file: name the directory
                raise OSError(full.errno, full.strerror, str(directory)) from err
            raise
    records = []
    for job in jobs:
        record = part_record(directory, job.part, warn=True)
        if record is None:
            raise RuntimeError(f"token shards of {job.part.name} in {directory} are damaged right after writing")
        records.append(record)
    return records


class ShardedTokens:
    """The shards of one stream as one read-only token sequence: len() and [start:stop] slices, which cross
    shard boundaries. Each shard is memory-mapped when a window first asks for it; nothing is read before.

    A memory map holds a file descriptor, so at most MAX_OPEN shards stay mapped (the least recently read is
    unmapped first): a corpus of thousands of shards trains under `ulimit -n 1024`."""

    MAX_OPEN = 64

    def __init__(self, paths: list[Path], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        sizes = [(Path(p), Path(p).stat().st_size) for p in paths]
        self.paths = [p for p, size in sizes if size]
        self.offsets = np.cumsum([0, *(size // self.dtype.itemsize for _, size in sizes if size)])
        self._open: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard(self, i: int) -> np.memmap:
        """Shard i's tokens, mapped now unless it is among the most recently read."""
        if i in self._open:
            self._open.move_to_end(i)
        else:
            if len(self._open) >= self.MAX_OPEN:
                self._open.popitem(last=False)  # its descriptor closes once no returned view holds it
            self._open[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r")
        return self._open[i]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens takes slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices have step 1")
        if start >= stop:
            return np.zeros(0, dtype=self.dtype)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        if stop <= self.offsets[i + 1]:  # within one shard: a view of its map
            return np.asarray(self.shard(i)[start - self.offsets[i]:stop - self.offsets[i]])
        out, filled = np.empty(stop - start, dtype=self.dtype), 0  # across shards: copied, so no map stays held
        while start < stop:
            end = min(stop, int(self.offsets[i + 1]))
            out[filled:filled + end - start] = self.shard(i)[start - self.offsets[i]:end - self.offsets[i]]
            filled, start, i = filled + end - start, end, i + 1
        return out

    def __getstate__(self) -> dict:  # a pickled copy (a worker process) maps its own shards
        return {**self.__dict__, "_open": OrderedDict()}


def default_processes() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
