"""Append-only run logs cut back to a checkpoint's step when a run resumes, so the resumed run logs those steps
again exactly once. The cut is atomic, and a line half-written by a killed process is dropped, not fatal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmlab.train.checkpoint import write_atomic


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return None  # torn by a kill mid-write


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the JSON lines (one object with a "step" each) at or before step."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and (s := _step_of(line)) is not None and s <= step]
    write_atomic(path, "".join(line + "\n" for line in kept))


SAMPLE_HEADER = re.compile(r"^--- step (\d+)\b")


def truncate_samples(path: Path, step: int) -> None:
    """samples.txt: keep the sections headed `--- step N` with N <= step."""
    if not path.exists():
        return
    kept, keep = [], True
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        header = SAMPLE_HEADER.match(line)
        if header:
            keep = int(header[1]) <= step
        if keep:
            kept.append(line)
    write_atomic(path, "".join(kept))
