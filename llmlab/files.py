"""Files that another part of llmlab reads back: each is written whole or not at all.

A reader (a resumed run, a sweep report, the next process sharing a cache) must never see half a file or half a
directory, so everything is written under a temporary sibling name and renamed into place: a rename is atomic
on one file system. Checkpoints, tokenizers, token caches, exports, sweep reports and monitor histories all
write through here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk: after a power cut, what a rename published
    names data that was written, not a hole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full(err: BaseException) -> OSError | None:
    """The OSError of a full disk or quota in err or what it wraps (libraries wrap it in their own errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def remove_orphan_temporaries(directory: Path) -> int:
    """Remove the temporary files (atomic_file's `.<name>.tmp<pid>`) that processes no longer alive left in
    directory, as a killed worker does; a live process's are its own to finish. Returns how many were removed."""
    removed = 0
    for tmp in directory.glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling path to write; it replaces `path` (flushed to disk) when the block ends, and is removed
    on an error."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)


def current_umask() -> int:
    """The process's umask: from /proc where Linux shows it (reading changes nothing), else by setting it and
    setting it back at once (a file another thread creates in between gets the common 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(root: Path) -> None:
    """root and everything under it get the modes a new directory or file gets (0777 / 0666 less the umask):
    a temporary directory is made 0700 and safetensors writes its files 0600, which would keep a colleague on a
    shared machine from reading a checkpoint or an export that every other file of the run lets them read."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def publishing(final: Path) -> Iterator[Path]:
    """An empty temporary directory beside `final` to fill; when the block ends it replaces `final` whole, its
    files flushed to disk first, with the modes the umask gives new files (as_umask_allows).

    An existing `final` is retired first (a rename cannot overwrite a non-empty directory). On an error the
    temporary directory is removed and `final` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{final.name}.", dir=final.parent))
    try:
        yield tmp
        as_umask_allows(tmp)
        for path in sorted(tmp.rglob("*"), reverse=True):  # files before the directories that hold them
            fsync(path)
        fsync(tmp)
        retired = tmp.with_name(tmp.name + ".old")
        if final.exists():
            os.replace(final, retired)
        os.replace(tmp, final)
        fsync(final.parent)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TEMPORARY_PREFIX = ".tmp_"


def remove_temporaries(parent: Path, name_prefix: str = "") -> None:
    """Directories `publishing` left behind in a process that was killed mid-write: never a finished result."""
    for stale in parent.glob(f"{TEMPORARY_PREFIX}{name_prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return None  # torn by a kill mid-write


def read_jsonl(path: Path) -> list:
    """The values of a JSON-lines file, up to a torn last line (a writer killed mid-line); [] when it is missing."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the JSON lines (one object with a "step" each) at or before step; a torn last line is dropped."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and (s := _step_of(line)) is not None and s <= step]
    write_atomic(path, "".join(line + "\n" for line in kept))
