"""What each job's monitors saw inside the model, read back from their history files for the sweep report: the last
capture's attention entropy and sink share per layer, the mean update-to-weight ratio, the dead-MLP fraction, and
how many alerts fired. A job whose monitors were off has none of these (its cells stay empty)."""

from __future__ import annotations

import statistics
from pathlib import Path

from llmlab.files import read_jsonl
from llmlab.rundir import RunDir

COLUMNS = ("attn_entropy", "attn_sink", "update_ratio", "dead_mlp", "alerts")
MEANING = {
    "attn_entropy": "attention entropy (nats), mean over layers at the last capture",
    "attn_sink": "share of attention on the first token, mean over layers",
    "update_ratio": "update-to-weight ratio of the block matrices, mean at the last capture",
    "dead_mlp": "share of MLP units that never fire on the probe, mean over layers",
    "alerts": "health alerts over the run (warnings, not info)",
}


def last_row(path: Path) -> dict | None:
    """The last capture of a history file (a resumed run captured again after its checkpoint: rows are by step)."""
    rows = [r for r in read_jsonl(path) if isinstance(r, dict) and isinstance(r.get("step"), int)]
    return max(rows, key=lambda r: r["step"]) if rows else None


def numbers(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def per_layer_attention(run_dir: Path) -> dict[str, list[float]]:
    """{"entropy": [per layer], "sink": [per layer]} at the attention monitor's last capture ({} without one)."""
    row = last_row(RunDir(run_dir).monitor_history("attention"))
    layers = row.get("layers") if row else None
    if not isinstance(layers, dict):
        return {}
    ordered = sorted(layers.items(), key=lambda kv: int(kv[0].removeprefix("layer") or 0))
    out: dict[str, list[float]] = {}
    for stat in ("entropy", "sink"):
        values = [layer.get("mean", {}).get(stat) for _, layer in ordered if isinstance(layer, dict)]
        if values and all(isinstance(v, int | float) for v in values):
            out[stat] = [float(v) for v in values]
    return out


def internals(run_dir: Path) -> dict:
    """The report's internals columns for one job, and its per-layer attention for the plots."""
    attention = per_layer_attention(run_dir)
    run = RunDir(run_dir)
    weights = (last_row(run.monitor_history("distribution")) or {}).get("weights")
    ratios = numbers(stats.get("update_ratio") for name, stats in weights.items()
                     if isinstance(stats, dict) and name.startswith("blocks.")) if isinstance(weights, dict) else []
    health = last_row(run.monitor_history("health")) or {}
    dead = numbers(health.get("dead_mlp_fraction") or [])
    alerts = read_jsonl(run.alerts)
    monitored = run.monitors.is_dir()
    return {
        "attn_entropy": mean(attention.get("entropy", [])),
        "attn_sink": mean(attention.get("sink", [])),
        "update_ratio": mean(ratios),
        "dead_mlp": mean(dead),
        "alerts": sum(isinstance(a, dict) and a.get("level") != "info" for a in alerts) if monitored else None,
        "layers": attention,
    }
