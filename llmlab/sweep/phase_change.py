"""The in-context-learning phase change across a sweep (Olsson et al. 2022): when each job's first induction head
formed (the circuits monitor's first `circuit_formed`, the sweep report's formed_at), what the training loss and
the in-context score (eval/icl_score, data=induction) did around that step, the same over seeds, and one figure.

    python -m llmlab.sweep.phase_change DIR      # writes DIR/phase_change.{csv,json,md,png}
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from llmlab.files import write_atomic
from llmlab.monitors.circuit_history import circuit_summary, circuits_history
from llmlab.monitors.plots import render
from llmlab.sweep.collect import SEED, JobRecord, find_jobs, is_number, swept_keys

ICL = "eval/icl_score"
# two-sided 95% Student t quantiles by degrees of freedom: intervals over a handful of seeds (no scipy needed)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def series(job: JobRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(row["step"], row[key]) for row in job.curve if is_number(row.get(key)) and is_number(row.get("step"))]
    steps, values = zip(*rows, strict=True) if rows else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def window_mean(steps: np.ndarray, values: np.ndarray, low: float, high: float) -> float | None:
    """Mean of the values logged at steps in [low, high]; None when none was."""
    inside = (steps >= low) & (steps <= high)
    return float(values[inside].mean()) if inside.any() else None


def change(steps: np.ndarray, values: np.ndarray, at: int, window: int) -> float | None:
    """Mean over (at, at + window] minus mean over [at - window, at): how a curve moved across a step."""
    before = window_mean(steps, values, at - window, at - 1e-9)
    after = window_mean(steps, values, at + 1e-9, at + window)
    return None if before is None or after is None else after - before


def first_above(history: list[dict], score: str, threshold: float) -> int | None:
    """The first capture step at which some head's score exceeds the threshold."""
    steps, values = strongest(history, score)
    above = np.flatnonzero(values > threshold)
    return int(steps[above[0]]) if len(above) else None


def job_phase(job: JobRecord, window: int, threshold: float) -> dict:
    """One job: when its first induction head formed (the monitor's formation event) and when its first
    previous-token head passed the same threshold, the train-loss and icl-score change across each of those
    steps, and the final icl score."""
    history = circuits_history(job.path)
    summary = circuit_summary(history)
    formed, prev = summary["formed_at"], first_above(history, "prev_token", threshold)
    loss_steps, losses = series(job, "train/loss")
    icl_steps, icl = series(job, ICL)
    return {
        **{k: job.overrides.get(k, "") for k in job.overrides},
        "formed_at": formed,
        "max_induction": summary["max_induction"],
        "loss_change_at_formation": change(loss_steps, losses, formed, window) if formed else None,
        "icl_change_at_formation": change(icl_steps, icl, formed, window) if formed else None,
        "prev_token_at": prev,
        "loss_change_at_prev_token": change(loss_steps, losses, prev, window) if prev else None,
        "icl_change_at_prev_token": change(icl_steps, icl, prev, window) if prev else None,
        "final_icl_score": float(icl[-1]) if len(icl) else None,
        "final_val_loss": job.value("val_loss"),
        "wall_s": job.value("wall_s"),
        "dir": job.name,
    }


def interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and its 95% t-interval over seeds (None bounds for one value)."""
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def over_seeds(jobs: list[dict], keys: list[str]) -> list[dict]:
    """One row per setting of the non-seed keys: how many seeds formed a head, the formation step and the final
    icl score with 95% intervals over seeds."""
    settings: dict[tuple, list[dict]] = {}
    for job in jobs:
        settings.setdefault(tuple(job.get(k, "") for k in keys), []).append(job)
    rows = []
    for setting, members in settings.items():
        formed = [j["formed_at"] for j in members if j["formed_at"] is not None]
        prev = [j["prev_token_at"] for j in members if j.get("prev_token_at") is not None]
        icl = [j["final_icl_score"] for j in members if j["final_icl_score"] is not None]
        f_mean, f_low, f_high = interval(formed)
        p_mean, p_low, p_high = interval(prev)
        i_mean, i_low, i_high = interval(icl)
        rows.append({**dict(zip(keys, setting, strict=True)), "seeds": len(members), "formed": len(formed),
                     "formed_at_mean": f_mean, "formed_at_low": f_low, "formed_at_high": f_high,
                     "formed_at_each": formed, "prev_token_formed": len(prev), "prev_token_at_mean": p_mean,
                     "prev_token_at_low": p_low, "prev_token_at_high": p_high, "prev_token_at_each": prev,
                     "final_icl_mean": i_mean, "final_icl_low": i_low, "final_icl_high": i_high})
    return rows


def number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def step_interval(row: dict, name: str, count: int) -> str:
    """'mean [low, high] (each)' of a formation step over seeds, or 'never'."""
    if not count:
        return "never"
    return (f"{number(row[name + '_mean'], 0)} [{number(row[name + '_low'], 0)}, {number(row[name + '_high'], 0)}] "
            f"({', '.join(map(str, row[name + '_each']))})")


def markdown(grouped: list[dict], jobs: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join([*keys, "induction head formed", "formation step: mean [95% interval] (each)",
                                "previous-token head formed", "its step: mean [95% interval] (each)",
                                "final icl_score: mean [95% interval]"]) + " |",
             "|" + "---|" * (len(keys) + 5)]
    for row in grouped:
        icl = f"{number(row['final_icl_mean'])} [{number(row['final_icl_low'])}, {number(row['final_icl_high'])}]"
        lines.append("| " + " | ".join([*(str(row[k]) for k in keys), f"{row['formed']}/{row['seeds']}",
                                        step_interval(row, "formed_at", row["formed"]),
                                        f"{row['prev_token_formed']}/{row['seeds']}",
                                        step_interval(row, "prev_token_at", row["prev_token_formed"]), icl]) + " |")
    lines += ["", "| " + " | ".join([*keys, SEED, "formed_at", "train-loss change", "icl_score change",
                                     "prev-token head at", "train-loss change", "icl_score change",
                                     "final icl_score", "final val loss"]) + " |", "|" + "---|" * (len(keys) + 9)]
    for job in jobs:
        lines.append("| " + " | ".join([*(str(job.get(k, "")) for k in keys), str(job.get(SEED, "")),
                                        number(job["formed_at"]), number(job["loss_change_at_formation"]),
                                        number(job["icl_change_at_formation"]), number(job["prev_token_at"]),
                                        number(job["loss_change_at_prev_token"]),
                                        number(job["icl_change_at_prev_token"]), number(job["final_icl_score"]),
                                        number(job["final_val_loss"])]) + " |")
    return "\n".join(lines) + "\n"


def label_of(job: JobRecord, keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={job.overrides.get(k, '')}" for k in keys) or job.name


def strongest(history: list[dict], score: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, the largest score of any head) over a job's circuit captures."""
    rows = [(row["step"], max(v for heads in row["scores"][score] for v in heads))
            for row in history if row["scores"].get(score)]
    steps, values = zip(*rows, strict=True) if rows else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def phase_change_figure(jobs: list[JobRecord], keys: list[str], threshold: float, title: str = "") -> Figure:
    """Four panels against steps, one colour per setting (seeds share it): training loss, eval/icl_score, and the
    strongest head's induction and previous-token scores; each job's formation step is a black-edged dot."""
    fig = Figure(figsize=(13, 8.5), dpi=80, layout="constrained")
    axes = fig.subplots(2, 2).flatten()
    settings = list(dict.fromkeys(label_of(j, keys) for j in jobs))
    colours = {s: f"C{i % 10}" for i, s in enumerate(settings)}
    labelled: set[str] = set()
    any_formed = False
    for job in jobs:
        label = label_of(job, keys)
        style = {"color": colours[label], "alpha": 0.75, "linewidth": 1.1,
                 "label": None if label in labelled else label}
        labelled.add(label)
        history = circuits_history(job.path)
        formed = circuit_summary(history)["formed_at"]
        any_formed |= formed is not None
        curves = (series(job, "train/loss"), series(job, ICL), strongest(history, "induction"),
                  strongest(history, "prev_token"))
        for ax, (steps, values) in zip(axes, curves, strict=True):
            if len(steps):
                ax.plot(steps, values, **style)
                if formed is not None:
                    ax.plot([formed], [np.interp(formed, steps, values)], marker="o", markersize=7,
                            color=colours[label], markeredgecolor="black", linestyle="none")
    axes[2].axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"formation threshold {threshold}")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss (nats/token)")
    axes[1].set(title="in-context score: loss on the repeat minus on its first occurrence", xlabel="step",
                ylabel="eval/icl_score (nats/token)")
    axes[2].set(title="strongest head's induction score (random tokens repeated)", xlabel="step",
                ylabel="attention to the token after the earlier occurrence", ylim=(0, 1))
    axes[3].set(title="strongest head's previous-token score", xlabel="step",
                ylabel="attention to the token before", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
    legend = "black-edged dot: the job's first induction head formed" if any_formed else \
        "no job formed an induction head"
    axes[2].legend(fontsize=8, title=legend, title_fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def write_phase_change(sweep_dir: str | Path, window: int = 50, threshold: float = 0.4) -> dict:
    """phase_change.{json,csv,md,png} in the sweep directory; the record written as JSON."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    keys = [k for k in swept_keys(jobs, sweep_dir) if k != SEED]
    phases = [job_phase(job, window, threshold) for job in jobs]
    grouped = over_seeds(phases, keys)
    record = {"window": window, "swept": keys, "settings": grouped, "jobs": phases}
    write_atomic(sweep_dir / "phase_change.json", json.dumps(record, indent=1))
    buffer = io.StringIO()
    columns = [*keys, SEED, "formed_at", "max_induction", "loss_change_at_formation", "icl_change_at_formation",
               "prev_token_at", "loss_change_at_prev_token", "icl_change_at_prev_token", "final_icl_score",
               "final_val_loss", "wall_s", "dir"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(phases)
    write_atomic(sweep_dir / "phase_change.csv", buffer.getvalue())
    write_atomic(sweep_dir / "phase_change.md", markdown(grouped, phases, keys))
    title = f"induction heads: {len(jobs)} job{'' if len(jobs) == 1 else 's'}"
    render(phase_change_figure(jobs, keys, threshold, title=title), sweep_dir / "phase_change.png")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.sweep.phase_change", description=__doc__)
    parser.add_argument("sweep_dir")
    parser.add_argument("--window", type=int, default=50, help="steps either side of the formation step")
    parser.add_argument("--threshold", type=float, default=0.4, help="the circuits monitor's formation threshold")
    args = parser.parse_args(argv)
    try:
        write_phase_change(args.sweep_dir, args.window, args.threshold)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.sweep_dir) / "phase_change.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
