"""A modular-arithmetic run read back: its accuracy curves (metrics.jsonl) and the progress monitor's captures
(monitors/progress/history.jsonl), and when it memorised and when it grokked. No torch, no matplotlib: readers of
finished runs stay light."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from llmlab.files import read_jsonl
from llmlab.rundir import RunDir

GROKKED = 0.99  # held-out accuracy that counts as generalised (and training accuracy as memorised)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t quantiles


def progress_history(run_dir: str | Path) -> list[dict]:
    """The progress monitor's captures in step order (a resumed run's later row for a step wins)."""
    rows = {row["step"]: row for row in read_jsonl(RunDir(run_dir).monitor_history("progress"))
            if isinstance(row, dict) and isinstance(row.get("step"), int)}
    return [rows[step] for step in sorted(rows)]


def first_step(curve: list[dict], key: str, threshold: float = GROKKED) -> int | None:
    """The first logged step at which curve's `key` reached threshold; None if it never did."""
    for row in curve:
        value = row.get(key)
        if isinstance(value, int | float) and value >= threshold and isinstance(row.get("step"), int):
            return row["step"]
    return None


def grokking_summary(curve: list[dict], threshold: float = GROKKED) -> dict:
    """memorised_at (first evaluation with training accuracy >= threshold), grokked_at (the same for held-out
    accuracy: the grokking step), grokking_delay (their difference) and the last evaluation's two accuracies;
    {} for a run that logged no modular accuracy."""
    evals = [row for row in curve if isinstance(row.get("eval/heldout_accuracy"), int | float)]
    if not evals:
        return {}
    memorised, grokked = first_step(evals, "eval/train_accuracy", threshold), first_step(
        evals, "eval/heldout_accuracy", threshold)
    return {"memorised_at": memorised, "grokked_at": grokked,
            "grokking_delay": grokked - memorised if grokked is not None and memorised is not None else None,
            "train_accuracy": evals[-1].get("eval/train_accuracy"),
            "heldout_accuracy": evals[-1]["eval/heldout_accuracy"]}


def seed_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95% Student-t interval of the mean over seeds; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half
