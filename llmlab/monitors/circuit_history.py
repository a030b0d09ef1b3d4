"""A run's circuits history read back (monitors/circuits/history.jsonl), for the end-of-run plot and the sweep
report. No torch, no matplotlib: readers of finished runs stay light."""

from __future__ import annotations

import math
from pathlib import Path

from llmlab.files import read_jsonl
from llmlab.rundir import RunDir


def circuits_history(run_dir: str | Path) -> list[dict]:
    """The circuits monitor's captures of a run, in step order, up to a torn last line (a resumed run captured the
    steps after its checkpoint again: the later row wins)."""
    rows = {row["step"]: row for row in read_jsonl(RunDir(run_dir).monitor_history("circuits"))
            if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("scores"), dict)}
    return [rows[step] for step in sorted(rows)]


def peak(row: dict, score: str) -> float | None:
    """The largest score of any head at one capture."""
    values = [v for heads in row["scores"].get(score, []) for v in heads if isinstance(v, int | float)]
    return max(values) if values else None


def circuit_summary(history: list[dict]) -> dict:
    """max_induction and max_copy (any head, any capture), formed_at (the first formation event's step) and
    copy_accuracy (at the last capture); None where the history holds none."""
    def largest(score: str) -> float | None:
        peaks = [p for row in history if (p := peak(row, score)) is not None]
        return max(peaks) if peaks else None

    formed = [row["step"] for row in history if row.get("formed")]
    accuracy = history[-1].get("copy_accuracy") if history else None
    return {"max_induction": largest("induction"), "max_copy": largest("copy"),
            "formed_at": formed[0] if formed else None,
            "copy_accuracy": accuracy if isinstance(accuracy, int | float) and math.isfinite(accuracy) else None}
