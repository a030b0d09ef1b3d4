"""metrics.json, typed: the record a run leaves as it ends, and the one table of its final metrics.

Each final metric is declared once, in METRICS: its key in metrics.json, the key the same figure has in
metrics.jsonl and TensorBoard (None where the log has none), and its label for a reader. The run's summary, the
sweep report (which reads an unfinished job's log instead), the chat page, the model card and TensorBoard's
HParams view all take their keys from here. metrics.json keeps the names it always had, so files written by
older versions read the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PPL_CAP = 50.0  # exp(50) ~ 5e21: a diverged run's perplexity stays a finite number


def perplexity(loss: float) -> float:
    """exp(loss) of a loss in nats per token, capped so a diverged run still writes a finite number."""
    return math.exp(min(loss, PPL_CAP))


@dataclass(frozen=True)
class Metric:
    key: str  # in metrics.json
    logged: str | None  # in metrics.jsonl and TensorBoard
    label: str  # for a reader (chat page, model card)


# the final figures a reader compares models by, in the order shown (time, speed and memory are the machine's)
METRICS = (
    Metric("val_loss", "val/loss", "val loss"),
    Metric("val_bpb", "val/bpb", "val bits/byte"),
    Metric("val_loss_full", "val/loss_full", "whole-split val loss"),
    Metric("val_bpb_full", "val/bpb_full", "whole-split bits/byte"),
    Metric("val_ppl", "val/ppl", "val perplexity"),
    Metric("best_val_loss", None, "best val loss"),
    Metric("train_loss", "train/loss", "train loss"),
    Metric("gap_closed", None, "gap closed (bigram to entropy floor)"),
    Metric("entropy_floor", None, "entropy floor"),
    Metric("bigram_loss", None, "bigram loss"),
    Metric("unigram_loss", None, "unigram loss"),
)
# the run's cost, logged as it trains as well
COSTS = (Metric("wall_s", "perf/wall_s", "training time (s)"), Metric("tokens_per_s", "perf/tokens_per_s", "tokens/s"))
BY_KEY = {m.key: m for m in (*METRICS, *COSTS)}
# what TensorBoard's HParams view shows for each run (as final/<key>)
HPARAM_METRICS = ("val_loss", "val_loss_full", "val_bpb", "val_bpb_full", "best_val_loss", "val_ppl", "gap_closed",
                  "tokens_per_s", "wall_s")
# written only when the run has them: the whole-split score of a completed run, a mixture of experts' active size
WHEN_PRESENT = ("val_loss_full", "val_tokens_scored", "val_bytes_scored", "val_bpb_full", "val_windows_sha256",
                "active_params")


def logged_key(key: str) -> str | None:
    """metrics.jsonl's key for metrics.json's `key` (None: the log has no such figure)."""
    metric = BY_KEY.get(key)
    return metric.logged if metric else None


@dataclass
class RunSummary:
    """One run's metrics.json. Fields in the file's order; every one may be missing from an older file (None)."""

    status: str  # completed | interrupted | failed
    message: str | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    params: int | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    best_val_loss: float | None = None
    train_loss: float | None = None
    entropy_floor: float | None = None
    bigram_loss: float | None = None
    unigram_loss: float | None = None
    gap_closed: float | None = None  # share of the bigram -> floor gap the model closed (1.0 = at the floor)
    wall_s: float | None = None
    total_s: float | None = None
    tokens_per_s: float | None = None  # None: stopped before a step was timed
    peak_mem_mb: float | None = None
    timing: dict | None = None  # start-up, evaluations, sampling, checkpoints (None: the run failed)
    skipped_steps: int | None = None
    val_bpb: float | None = None
    val_loss_full: float | None = None
    val_tokens_scored: int | None = None
    val_bytes_scored: int | None = None
    val_bpb_full: float | None = None
    val_windows_sha256: str | None = None
    flops_per_token: float | None = None
    train_flops: float | None = None
    monitors: dict | None = None
    active_params: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know (a newer writer's)

    @classmethod
    def of_run(cls, status: str, message: str | None, steps: int, tokens_seen: int, val_loss: float | None,
               train_loss: float | None, stats: dict, best_val: float, **measured) -> RunSummary:
        """A run's summary as it ends: perplexity, baselines (stats: dataset_stats.json) and the share of the
        baseline gap derived here; measured: the other fields by name."""
        floor, bigram = stats.get("entropy_floor"), stats.get("bigram_loss")  # text stages only
        return cls(status, message, steps, tokens_seen, val_loss=val_loss,
                   val_ppl=perplexity(val_loss) if val_loss is not None else None,
                   best_val_loss=best_val if math.isfinite(best_val) else None, train_loss=train_loss,
                   entropy_floor=floor, bigram_loss=bigram, unigram_loss=stats.get("unigram_loss"),
                   gap_closed=(bigram - val_loss) / (bigram - floor) if None not in (floor, bigram, val_loss)
                   else None, **measured)

    @classmethod
    def from_dict(cls, record: dict) -> RunSummary:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in record.items() if k in known},
                   extra={k: v for k, v in record.items() if k not in known})

    def to_dict(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in WHEN_PRESENT:
            if record[key] is None:
                del record[key]
        return {**record, **self.extra}

    def write(self, path: Path) -> dict:
        from llmlab.files import write_atomic

        record = self.to_dict()
        write_atomic(path, json.dumps(record, indent=2))
        return record


def read_summary(path: Path) -> tuple[dict | None, str]:
    """metrics.json as a dict, or None and why not ("" when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as err:
        return None, f"metrics.json is not readable ({getattr(err, 'strerror', None) or type(err).__name__})"
    if not text.strip():
        return None, "metrics.json is empty"
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"metrics.json is not valid JSON ({err.msg}: line {err.lineno} column {err.colno})"
    if not isinstance(summary, dict):
        return None, f"metrics.json holds a JSON {type(summary).__name__}, not an object"
    if not isinstance(summary.get("status"), str) or not summary["status"]:
        return None, "metrics.json has no status"
    return summary, ""
