"""History files shared by monitors: one JSON line per capture, trimmed when a run resumes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from llmlab.files import truncate_jsonl

_lock = threading.Lock()  # worker threads append concurrently


def append_history(path: Path, record: dict) -> None:
    line = json.dumps(record) + "\n"
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)


def truncate_history(path: Path, resume_step: int | None) -> None:
    """Drop captures past the checkpoint a run resumes from: the resumed run captures them again."""
    if resume_step is not None:
        truncate_jsonl(path, resume_step)
