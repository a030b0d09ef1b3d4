"""The sweep report: one row per job, seeds grouped, written as CSV, Markdown and JSON beside the jobs.

`write_sweep_report(dir)` rebuilds everything from disk and can run any time: after each job (the
Hydra callback does), at the end of a multirun, or by hand with `python -m llmlab.sweep DIR`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from llmlab.files import write_atomic
from llmlab.monitors.circuit_history import circuit_summary, circuits_history
from llmlab.sweep.collect import SEED, STATUSES, JobRecord, find_jobs, is_number, swept_keys

METRICS = ("val_loss", "best_val_loss", "val_ppl", "entropy_floor", "gap_to_floor", "params", "wall_s",
           "tokens_per_s", "peak_mem_mb", "steps")
# from the circuits monitor's history, where a job has one (llmlab.monitors.circuit_history.circuit_summary)
CIRCUITS = ("max_induction", "max_copy", "formed_at", "copy_accuracy")
GROUPED = ("val_loss", "best_val_loss", "val_ppl", "gap_to_floor", "wall_s", "tokens_per_s", "max_induction",
           "max_copy", "copy_accuracy")


def job_row(job: JobRecord, keys: list[str]) -> dict:
    def number(key: str):  # a value of another type (a hand-edited file) is shown as missing, not computed with
        value = job.value(key)
        return value if is_number(value) else None

    val, floor = number("val_loss"), number("entropy_floor")
    label = (",".join(f"{k}={job.overrides.get(k, '')}" for k in keys) if job.overrides else "") or job.name
    row = {"job": label, **{k: job.overrides.get(k, "") for k in keys}, "status": job.status}
    row.update({
        "val_loss": val,
        "best_val_loss": number("best_val_loss"),
        "val_ppl": math.exp(min(val, 50.0)) if val is not None else None,
        "entropy_floor": floor,
        "gap_to_floor": val - floor if val is not None and floor is not None else None,
        "params": number("params"),
        "wall_s": number("wall_s"),
        "tokens_per_s": number("tokens_per_s"),
        "peak_mem_mb": number("peak_mem_mb"),
        "steps": job.steps if is_number(job.steps) else None,
        **circuit_summary(circuits_history(job.path)),
        "dir": job.name,
        "note": job.note,
    })
    return row


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_over_seeds(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per setting of the non-seed keys: mean, std and n over the seeds that reached a value."""
    if SEED not in keys:
        return []
    others = [k for k in keys if k != SEED]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
    if all(len(g) == 1 for g in groups.values()):
        return []
    grouped = []
    for setting, members in groups.items():
        out = dict(zip(others, setting, strict=True))
        out["n"] = len(members)
        out["completed"] = sum(m["status"] == "completed" for m in members)
        for metric in GROUPED:
            values = [m.get(metric) for m in members if isinstance(m.get(metric), int | float)]
            out[f"{metric}_mean"], out[f"{metric}_std"] = mean_std(values)
        grouped.append(out)
    return grouped


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 1e4:
        return f"{value:,}"
    return str(value)


def cell(value, limit: int | None) -> str:
    text = fmt(value).replace("\n", " ⏎ ").replace("|", "\\|")
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def markdown_table(rows: list[dict], columns: list[str], limit: int | None = 160) -> str:
    """limit: the longest a cell may be (a long error message is cut; the CSV and JSON hold it whole)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c), limit) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def status_legend(rows: list[dict]) -> list[str]:
    """What each status in the table means (the ones that occur, completed aside)."""
    seen = [s for s in STATUSES if s != "completed" and any(r["status"] == s for r in rows)]
    return [f"- `{s}`: {STATUSES[s]}." for s in seen]


def grouped_markdown(grouped: list[dict], others: list[str]) -> str:
    metrics = [m for m in GROUPED if any(g[f"{m}_mean"] is not None for g in grouped)]
    columns = [*others, "n", *(f"{m} (mean ± std)" for m in metrics)]
    rows = []
    for g in grouped:
        row = {k: g[k] for k in (*others, "n")}
        for m in metrics:
            mean, std = g[f"{m}_mean"], g[f"{m}_std"]
            spread = "" if not std else f" ± {std:.2g}" if abs(std) < 100 else f" ± {std:,.0f}"
            row[f"{m} (mean ± std)"] = "–" if mean is None else fmt(mean) + spread
        rows.append(row)
    return markdown_table(rows, columns)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_sweep_report(sweep_dir: str | Path, plots: bool = True, generations: dict | None = None) -> dict:
    """Write sweep_summary.{csv,md,json} (+ plots, generation comparison) into sweep_dir; the JSON content.

    generations: options for the generation comparison (prompts, max_new_tokens, seed, ...), None to skip it.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no jobs in it (expected <job>/.hydra/ in it, as a multirun writes)")
    keys = swept_keys(jobs, sweep_dir)
    rows = [job_row(job, keys) for job in jobs]
    grouped = group_over_seeds(rows, keys)
    circuits = [c for c in CIRCUITS if any(r[c] is not None for r in rows)]
    columns = ["job", *keys, "status", *METRICS, *circuits, "dir", "note"]
    report = {"sweep_dir": str(sweep_dir), "swept": keys, "jobs": rows, "grouped_over_seeds": grouped}

    md = [f"# Sweep report: {sweep_dir.name}", "",
          f"{len(jobs)} jobs, swept: {', '.join(keys) or '(nothing)'}; "
          f"{sum(r['status'] == 'completed' for r in rows)} completed.", "",
          "gap_to_floor = val_loss - entropy_floor (nats per token; 0 is the best any model can do).", ""]
    legend = status_legend(rows)
    if legend:
        md += ["Status:", "", *legend, ""]
    show_dir = not keys or any(not job.overrides for job in jobs)  # a row the swept values cannot name
    if circuits:
        md += ["max_induction / max_copy: the largest score of any head at any capture; formed_at: the first step a "
               "head's score passed monitors.circuits.threshold; copy_accuracy: at the last capture.", ""]
    md += [markdown_table(rows, [*keys, *(["dir"] if show_dir else []), "status", *METRICS, *circuits,
                                 *(["note"] if any(r["note"] for r in rows) else [])])]
    if grouped:
        md += ["", "## Over seeds", "", grouped_markdown(grouped, [k for k in keys if k != SEED])]
    if plots:
        from llmlab.sweep.plots import write_sweep_plots

        figures = write_sweep_plots(sweep_dir, jobs, rows, keys)
        report["plots"] = [p.name for p in figures]
        md += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in figures)]
    if generations is not None:
        from llmlab.sweep.generations import compare_generations

        labels = {row["dir"]: row["job"] for row in rows}
        comparison = compare_generations(sweep_dir, jobs, labels, **generations)
        report["generations"] = comparison
        if comparison:
            md += ["", "## Generations", "", "Same prompts, seed and sampling settings for every job.", "",
                   markdown_table(comparison, ["job", "prompt", "completion"], limit=None)]
    write_atomic(sweep_dir / "sweep_summary.csv", csv_text(rows, columns))
    write_atomic(sweep_dir / "sweep_summary.md", "\n".join(md) + "\n")
    write_atomic(sweep_dir / "sweep_summary.json", json.dumps(report, indent=2, default=str))
    return report
