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
from llmlab.sweep.collect import SEED, JobRecord, find_jobs, swept_keys

METRICS = ("val_loss", "best_val_loss", "val_ppl", "entropy_floor", "gap_to_floor", "params", "wall_s",
           "tokens_per_s", "peak_mem_mb", "steps")
GROUPED = ("val_loss", "best_val_loss", "val_ppl", "gap_to_floor", "wall_s", "tokens_per_s")


def job_row(job: JobRecord, keys: list[str]) -> dict:
    val, floor = job.value("val_loss"), job.value("entropy_floor")
    label = ",".join(f"{k}={job.overrides.get(k, '')}" for k in keys) or job.name
    row = {"job": label, **{k: job.overrides.get(k, "") for k in keys}, "status": job.status}
    row.update({
        "val_loss": val,
        "best_val_loss": job.value("best_val_loss"),
        "val_ppl": math.exp(min(val, 50.0)) if val is not None else None,
        "entropy_floor": floor,
        "gap_to_floor": val - floor if val is not None and floor is not None else None,
        "params": job.value("params"),
        "wall_s": job.value("wall_s"),
        "tokens_per_s": job.value("tokens_per_s"),
        "peak_mem_mb": job.value("peak_mem_mb"),
        "steps": job.steps,
        "dir": job.name,
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
            values = [m[metric] for m in members if isinstance(m[metric], int | float)]
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


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def grouped_markdown(grouped: list[dict], others: list[str]) -> str:
    columns = [*others, "n", *(f"{m} (mean ± std)" for m in GROUPED)]
    rows = []
    for g in grouped:
        row = {k: g[k] for k in (*others, "n")}
        for m in GROUPED:
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
        raise FileNotFoundError(f"{sweep_dir}: no jobs in it (expected <job>/.hydra/overrides.yaml)")
    keys = swept_keys(jobs, sweep_dir)
    rows = [job_row(job, keys) for job in jobs]
    grouped = group_over_seeds(rows, keys)
    columns = ["job", *keys, "status", *METRICS, "dir"]
    report = {"sweep_dir": str(sweep_dir), "swept": keys, "jobs": rows, "grouped_over_seeds": grouped}

    md = [f"# Sweep report: {sweep_dir.name}", "",
          f"{len(jobs)} jobs, swept: {', '.join(keys) or '(nothing)'}; "
          f"{sum(r['status'] == 'completed' for r in rows)} completed.", "",
          "gap_to_floor = val_loss - entropy_floor (nats per token; 0 is the best any model can do).", "",
          markdown_table(rows, [*keys, "status", *METRICS])]
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
                   markdown_table([{**c, "completion": c["completion"].replace("\n", " ⏎ ").replace("|", "\\|")}
                                   for c in comparison], ["job", "prompt", "completion"])]
    write_atomic(sweep_dir / "sweep_summary.csv", csv_text(rows, columns))
    write_atomic(sweep_dir / "sweep_summary.md", "\n".join(md) + "\n")
    write_atomic(sweep_dir / "sweep_summary.json", json.dumps(report, indent=2, default=str))
    return report
