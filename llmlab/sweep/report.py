"""The sweep report: one row per job, seeds grouped, written as CSV, Markdown and JSON beside the jobs.

`write_sweep_report(dir)` rebuilds everything from disk and can run any time: after each job (the
Hydra callback does), at the end of a multirun, or by hand with `python -m llmlab.sweep DIR`.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np

from llmlab.config.errors import ConfigError
from llmlab.files import write_atomic
from llmlab.monitors.circuit_history import circuit_summary, circuits_history
from llmlab.monitors.progress_history import GROKKED, grokking_summary, seed_interval
from llmlab.rundir import RunDir
from llmlab.rundir.layout import MANIFEST
from llmlab.rundir.summary import perplexity
from llmlab.sweep.collect import SEED, STATUSES, JobRecord, declared_reference, find_jobs, is_number, swept_keys
from llmlab.sweep.hparams import write_hparams_experiment
from llmlab.sweep.internals import COLUMNS as INTERNALS
from llmlab.sweep.internals import MEANING, internals
from llmlab.sweep.intervals import compare, describe
from llmlab.train.split_eval import SplitLoss, read_windows

METRICS = ("val_loss_full", "val_bpb_full", "rank", "val_loss", "val_bpb", "best_val_loss", "val_ppl", "entropy_floor",
           "gap_to_floor", "compute_matched", "params", "train_flops", "wall_s", "tokens_per_s", "peak_mem_mb", "steps")
# from the circuits monitor's history, where a job has one (llmlab.monitors.circuit_history.circuit_summary)
CIRCUITS = ("max_induction", "max_copy", "formed_at", "copy_accuracy")
# from a modular-arithmetic job's accuracy evaluations (llmlab.monitors.progress_history.grokking_summary)
GROKKING = ("memorised_at", "grokked_at", "grokking_delay", "train_accuracy", "heldout_accuracy")
GROUPED = ("val_loss_full", "val_bpb_full", "val_loss", "gap_to_floor", "compute_matched", "wall_s", "tokens_per_s")
MEANINGS = {
    "val_loss_full": "the final model's loss over every validation token (nats per token); the ranking's",
    "val_bpb_full": "the same loss in bits per byte of the text those tokens decode to: comparable across "
                    "tokenizers (a character and a BPE model of the same text)",
    "val_loss": "the last periodic evaluation's, on its fixed sample of windows",
    "val_bpb": "val_loss in bits per byte",
    "gap_to_floor": "val_loss_full - entropy_floor (0 is the best any model can do)",
    "compute_matched": "val/loss at the smallest training FLOPs any job reached (interpolated between "
                       "evaluations), so a bigger model is not credited for the compute it spent",
    "train_flops": "tokens seen x training FLOPs per token",
}


def job_row(job: JobRecord, keys: list[str]) -> dict:
    def number(key: str):  # a value of another type (a hand-edited file) is shown as missing, not computed with
        value = job.value(key)
        return value if is_number(value) else None

    full, floor = number("val_loss_full"), number("entropy_floor")
    val = full if full is not None else number("val_loss")
    label = (",".join(f"{k}={job.overrides.get(k, '')}" for k in keys) if job.overrides else "") or job.name
    row = {"job": label, **{k: job.overrides.get(k, "") for k in keys}, "status": job.status}
    row.update({
        "val_loss_full": full,
        "val_bpb_full": number("val_bpb_full"),
        "val_loss": number("val_loss"),
        "val_bpb": number("val_bpb"),
        "best_val_loss": number("best_val_loss"),
        "val_ppl": perplexity(val) if val is not None else None,
        "entropy_floor": floor,
        "gap_to_floor": val - floor if val is not None and floor is not None else None,
        "params": number("params"),
        "train_flops": number("train_flops"),
        "wall_s": number("wall_s"),
        "tokens_per_s": number("tokens_per_s"),
        "peak_mem_mb": number("peak_mem_mb"),
        "steps": job.steps if is_number(job.steps) else None,
        **circuit_summary(circuits_history(job.path)),
        **grokking_summary(job.curve),
        **{k: v for k, v in internals(job.path).items() if k != "layers"},
        "dir": job.name,
        "note": job.note,
    })
    return row


def val_curve_by_flops(job: JobRecord) -> list[tuple[float, float]]:
    """(training FLOPs, val/loss) at each evaluation: FLOPs per step from the job's own summary."""
    flops, steps = job.value("train_flops"), job.value("steps")
    if not (is_number(flops) and is_number(steps) and steps):
        return []
    per_step = flops / steps
    return [(row["step"] * per_step, row["val/loss"]) for row in job.curve
            if isinstance(row.get("step"), int) and is_number(row.get("val/loss"))]


def add_compute_matched(rows: list[dict], jobs: list[JobRecord]) -> float | None:
    """Each row's val/loss at the smallest total training FLOPs any job reached; that budget."""
    curves = {job.name: val_curve_by_flops(job) for job in jobs}
    budgets = [row["train_flops"] for row in rows if row["train_flops"] and curves.get(row["dir"])]
    budget = min(budgets) if budgets else None
    for row in rows:
        curve = curves.get(row["dir"]) or []
        row["compute_matched"] = None
        if budget is None or not curve or curve[0][0] > budget * (1 + 1e-9):
            continue
        xs, ys = [x for x, _ in curve], [y for _, y in curve]
        row["compute_matched"] = float(np.interp(budget, xs, ys))
    return budget


def add_ranks(rows: list[dict]) -> None:
    """rank 1 = the lowest whole-split loss (the periodic one for jobs that have none)."""
    scored = sorted((r for r in rows if rank_value(r) is not None), key=rank_value)
    for row in rows:
        row["rank"] = None
    for i, row in enumerate(scored, start=1):
        row["rank"] = i


def rank_value(row: dict) -> float | None:
    return row["val_loss_full"] if row["val_loss_full"] is not None else row["val_loss"]


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


def grokking_over_seeds(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per setting of the non-seed keys: how many seeds grokked, and their grokking steps' mean and 95% t
    interval; [] when no job is a modular-arithmetic run."""
    if not any("grokked_at" in row for row in rows):
        return []
    others = [k for k in keys if k != SEED]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
    out = []
    for setting, members in groups.items():
        steps = [m["grokked_at"] for m in members if isinstance(m.get("grokked_at"), int | float)]
        interval = seed_interval(steps)
        mean = interval[0] if interval else (steps[0] if steps else None)
        out.append({**dict(zip(others, setting, strict=True)), "grokked": f"{len(steps)}/{len(members)}",
                    "grokked_at_mean": mean, "grokked_at_low": interval[1] if interval else None,
                    "grokked_at_high": interval[2] if interval else None,
                    "grokked_at_each": " ".join(str(m.get("grokked_at")) for m in members)})
    return out


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


def setting_label(overrides: dict[str, str], others: list[str]) -> str:
    return ",".join(f"{k}={overrides.get(k, '')}" for k in others) or "(defaults)"


def find_reference(labels: list[str], settings: dict[str, dict[str, str]], reference: str | None) -> str:
    """The setting `reference` names (a value of the one swept key, or key=value pairs); the first by default."""
    if not reference:
        return labels[0]
    if "=" in reference:
        wanted = dict(part.split("=", 1) for part in reference.split(",") if "=" in part)
    else:
        keys = {k for overrides in settings.values() for k in overrides}
        if len(keys) != 1:
            raise ConfigError(f"sweep.reference={reference}: more than one key is swept ({', '.join(sorted(keys))}); "
                              "name it as \"key=value,key=value\"")
        wanted = {keys.pop(): reference}
    for label in labels:
        if all(same_value(settings[label].get(k), v) for k, v in wanted.items()):
            return label
    raise ConfigError(f"sweep.reference={reference}: no setting of this sweep matches it (the settings: "
                      f"{'; '.join(labels)})")


def same_value(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return a == b or float(a) == float(b)
    except ValueError:
        return False


def compare_to_reference(jobs: list[JobRecord], keys: list[str], reference: str | None, seed: int = 0
                         ) -> tuple[list[dict], str]:
    """One row per setting (its seeds grouped), ordered by whole-split loss, each with its difference from the
    reference setting and a paired bootstrap interval; and the summary in words. ([], "") without per-window
    losses (runs that predate them, or stages without a validation split)."""
    others = [k for k in keys if k != SEED]
    settings: dict[str, dict[str, str]] = {}
    runs: dict[str, list[SplitLoss]] = {}
    for job in jobs:
        label = setting_label(job.overrides, others)
        settings.setdefault(label, {k: job.overrides.get(k, "") for k in others})
        found, _ = read_windows(job.path, job.summary.get("val_windows_sha256")) if job.status == "completed" \
            else (None, "")
        if found is not None:
            runs.setdefault(label, []).append(found)
    labels = [label for label in settings if label in runs]
    if len(labels) < 2:
        return [], ""
    ref = find_reference(labels, settings, reference)
    table = []
    for label in labels:
        row = {"setting": label, "seeds": len(runs[label]),
               "val_loss_full": statistics.fmean(r.loss for r in runs[label]), "reference": label == ref}
        if label != ref:
            diff = compare(runs[label], runs[ref], seed=seed)
            row.update({"diff": diff.diff, "low": diff.low, "high": diff.high, "verdict": diff.verdict,
                        "paired": diff.paired, "sentence": describe(label, diff)})
        table.append(row)
    table.sort(key=lambda r: r["val_loss_full"])
    same = [r["setting"] for r in table if r.get("verdict") == "indistinguishable"]
    differ = [r["sentence"] for r in table if r.get("verdict") in ("better", "worse")]
    parts = ([f"{', '.join(same)}: indistinguishable from it"] if same else []) + differ
    seeds = {len(runs[label]) for label in labels}
    spread = "windows and seeds" if max(seeds) > 1 else "windows"
    summary = (f"Against {ref} (the reference), on the whole validation split, 95% paired bootstrap intervals over "
               f"{spread}: " + "; ".join(parts) + ".")
    return table, summary


def comparison_markdown(table: list[dict]) -> str:
    rows = []
    for r in table:
        rows.append({"setting": r["setting"] + (" (reference)" if r["reference"] else ""), "seeds": r["seeds"],
                     "val_loss_full": r["val_loss_full"],
                     "difference": "–" if r["reference"] else f"{r['diff']:+.4f}",
                     "95% interval": "–" if r["reference"] else f"[{r['low']:+.4f}, {r['high']:+.4f}]",
                     "verdict": "–" if r["reference"] else r["verdict"] + ("" if r["paired"] else " (unpaired)")})
    return markdown_table(rows, ["setting", "seeds", "val_loss_full", "difference", "95% interval", "verdict"])


def title(keys: list[str], sweep_dir: Path) -> str:
    others = [k for k in keys if k != SEED]
    if not others:
        return f"Sweep report: {sweep_dir.name}"
    return "Sweep report: " + " x ".join(others) + (" (over seeds)" if SEED in keys else "")


def fixed_overrides(jobs: list[JobRecord], keys: list[str]) -> list[str]:
    """The overrides every job shares besides the swept keys: the sweep's fixed setting, for the header."""
    shared = None
    for job in jobs:
        items = {(k, v) for k, v in job.overrides.items() if k not in keys}
        shared = items if shared is None else shared & items
    return sorted(f"{k}={v}" for k, v in shared or ())


def present(rows: list[dict], columns) -> list[str]:
    return [c for c in columns if any(r.get(c) is not None for r in rows)]


def check_choices(sweep_dir: str | Path, reference: str | None, checkpoint: str | None) -> None:
    """ConfigError, before anything is rebuilt, when the reference names no setting of the sweep's jobs or no job
    has the checkpoint asked for (the command line's choices: a typo must not rewrite the report without a word)."""
    jobs = find_jobs(Path(sweep_dir))
    if not jobs:
        return  # write_sweep_report says so
    reference = reference if reference is not None else declared_reference(Path(sweep_dir))
    if reference:
        others = [k for k in swept_keys(jobs, Path(sweep_dir)) if k != SEED]
        settings = {setting_label(job.overrides, others): {k: job.overrides.get(k, "") for k in others}
                    for job in jobs}
        find_reference(list(settings), settings, reference)
    if checkpoint and checkpoint != "latest":
        have = sorted({c.name for job in jobs for c in RunDir(job.path).checkpoints.glob("*")
                       if (c / MANIFEST).is_file()})
        if checkpoint not in have:
            raise ConfigError(f"--checkpoint {checkpoint}: no job of this sweep has it (the jobs have: "
                              f"{', '.join(have) or 'no checkpoint'}); nothing was rewritten")


def write_sweep_report(sweep_dir: str | Path, plots: bool = True, generations: dict | None = None,
                       reference: str | None = None) -> dict:
    """Write sweep_summary.{csv,md,json} (+ plots, generation comparison) into sweep_dir; the JSON content.

    generations: options for the generation comparison (prompts, max_new_tokens, seed, num_samples, checkpoint,
    ...), None to skip it. reference: sweep.reference (None: the sweep's own, else its first setting).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no jobs in it (expected <job>/.hydra/ in it, as a multirun writes)")
    keys = swept_keys(jobs, sweep_dir)
    rows = [job_row(job, keys) for job in jobs]
    budget = add_compute_matched(rows, jobs)
    add_ranks(rows)
    grouped = group_over_seeds(rows, keys)
    reference = reference if reference is not None else declared_reference(sweep_dir)
    table, summary = compare_to_reference(jobs, keys, reference)
    metrics = present(rows, METRICS)
    extra = present(rows, (*INTERNALS, *CIRCUITS, *GROKKING))
    columns = ["job", *keys, "status", *METRICS, *INTERNALS, *CIRCUITS, *GROKKING, "dir", "note"]
    report = {"sweep_dir": str(sweep_dir), "swept": keys, "jobs": rows, "grouped_over_seeds": grouped,
              "comparison": table, "summary": summary, "compute_budget_flops": budget}

    md = [f"# {title(keys, sweep_dir)}", "",
          f"{len(jobs)} jobs, swept: {', '.join(keys) or '(nothing)'}; "
          f"{sum(r['status'] == 'completed' for r in rows)} completed. (`{sweep_dir}`)"]
    fixed = fixed_overrides(jobs, keys)
    if fixed:
        md += ["", "Fixed overrides: " + " ".join(f"`{f}`" for f in fixed)]
    if summary:
        md += ["", f"**{summary}**", "", comparison_markdown(table)]
    md += ["", "## Jobs", "", *(f"- {m}: {MEANINGS[m]}." for m in metrics if m in MEANINGS)]
    if budget is not None and "compute_matched" in metrics:
        md += [f"- The compute budget matched: {budget:.3g} FLOPs."]
    if "entropy_floor" in metrics:
        md += ["- entropy_floor: the data's own entropy (no model beats it on average)."]
    md += [""]
    legend = status_legend(rows)
    if legend:
        md += ["Status:", "", *legend, ""]
    show_dir = not keys or any(not job.overrides for job in jobs)  # a row the swept values cannot name
    md += [markdown_table(rows, [*keys, *(["dir"] if show_dir else []), "status", *metrics,
                                 *(["note"] if any(r["note"] for r in rows) else [])])]
    if extra:
        md += ["", "## Inside the models", "", *(f"- {c}: {MEANING[c]}." for c in extra if c in MEANING)]
        if any(c in CIRCUITS for c in extra):
            md += ["- max_induction / max_copy: the largest score of any head at any capture; formed_at: the first "
                   "step a head's score passed monitors.circuits.threshold; copy_accuracy: at the last capture."]
        if any(c in GROKKING for c in extra):
            md += [f"- memorised_at / grokked_at: the first evaluation with training / held-out accuracy >= {GROKKED} "
                   "(grokked_at is the grokking step); grokking_delay: their difference; train_accuracy / "
                   "heldout_accuracy: at the last evaluation."]
        md += ["", markdown_table(rows, [*keys, *extra])]
    if grouped:
        md += ["", "## Over seeds", "", grouped_markdown(grouped, [k for k in keys if k != SEED])]
    grokking = grokking_over_seeds(rows, keys)
    if grokking:
        report["grokking_over_seeds"] = grokking
        md += ["", "## Grokking step over seeds", "",
               f"grokked_at: the first evaluation with held-out accuracy >= {GROKKED}; mean over the seeds that "
               "grokked, with the 95% Student-t interval of the mean.", "",
               markdown_table(grokking, [*(k for k in keys if k != SEED), "grokked", "grokked_at_mean",
                                         "grokked_at_low", "grokked_at_high", "grokked_at_each"])]
    if generations is not None:
        from llmlab.sweep.generations import QUALITY, compare_generations

        labels = {row["dir"]: row["job"] for row in rows}
        every_sample, side_by_side, scores = compare_generations(sweep_dir, jobs, labels, **generations)
        write_atomic(sweep_dir / "generation_comparison.csv",
                     csv_text(every_sample, ["job", "checkpoint", "prompt", "sample", "completion"]))
        write_atomic(sweep_dir / "generation_quality.csv",
                     csv_text(scores, ["job", "checkpoint", "samples", *present(scores, QUALITY)]))
        report["generations"], report["generation_quality"] = side_by_side, scores
        if scores:
            n = scores[0]["samples"]
            md += ["", "## Generation quality", "",
                   f"{n} samples per job ({generations.get('num_samples', 8)} per prompt, seeded alike for every job; "
                   "every sample in generation_comparison.csv): distinct_1/2 = distinct words / word pairs over all, "
                   "repeat_4gram = share of a sample's 4-grams it already wrote, mean_tokens = tokens to the end "
                   "token, ended = share that reached it; on the embedded language, grammatical and names_copied "
                   "= shares of complete sentences the language's grammar accepts / whose names are the two "
                   "introduced and whose typed code is the one given, valid_documents = whole documents it could "
                   "have written.", "",
                   markdown_table(scores, ["job", "checkpoint", *present(scores, QUALITY)])]
        if side_by_side:
            md += ["", "## Generations", "", "The first sample of each prompt; same seed and settings for every job.",
                   "", markdown_table(side_by_side, ["job", "prompt", "completion"], limit=None)]
    write_hparams_experiment(sweep_dir, jobs, keys)  # TensorBoard's HParams view of every job
    if plots:
        from llmlab.sweep.plots import write_sweep_plots

        figures = write_sweep_plots(sweep_dir, jobs, rows, keys, budget)
        if grokking:
            from llmlab.sweep.grokking import write_sweep_grokking_plot

            figures += [p for p in [write_sweep_grokking_plot(sweep_dir)] if p is not None]
        report["plots"] = [p.name for p in figures]
        md += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in figures)]
    write_atomic(sweep_dir / "sweep_summary.csv", csv_text(rows, columns))
    write_atomic(sweep_dir / "sweep_summary.md", "\n".join(md) + "\n")
    write_atomic(sweep_dir / "sweep_summary.json", json.dumps(report, indent=2, default=str))
    return report
