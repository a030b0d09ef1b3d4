"""The post-training comparison: each method's held-out pass@1 and pass@k against the SFT start, paired.

    python experiments/post_training/compare.py OUT_DIR START METHOD=SAMPLES=RUN[,RUN...] ...

START and every RUN are run directories that `python -m llmlab.evaluate run=<dir> data=tasks k=8 ...` has scored
with the same data, k and seed (so the same prompts and draws): their evaluation.json holds per-prompt scores.
SAMPLES is the number of completions the method sampled to train (its sampling compute). One RUN per seed; the
paired bootstrap resamples the prompts and the seeds (llmlab.sweep.intervals.compare_scores). Writes
OUT_DIR/results.json, results.csv and pass_at_1.png (pass@1 against the completions sampled).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llmlab.sweep.intervals import compare_scores, score_interval  # noqa: E402


def scores(run: str) -> dict:
    found = json.loads(Path(run, "evaluation.json").read_text())
    if "pass_at_k" not in found:
        raise SystemExit(f"{run}/evaluation.json has no pass@k: run python -m llmlab.evaluate run={run} k=8 first")
    return found["pass_at_k"]


def main(out: Path, start: str, methods: list[str]) -> None:
    reference = scores(start)
    names = [n for n in reference["per_prompt"] if n.startswith("pass@")]  # pass@1, pass@k
    rows = [{"method": "SFT start", "seeds": 1, "sampled_completions": 0,
             **{n: float(np.mean(reference["per_prompt"][n])) for n in names}}]
    for spec in methods:
        method, samples, runs = spec.split("=", 2)
        found = [scores(r) for r in runs.split(",")]
        for f in found:
            if (f["k"], f["seed"], len(f["per_prompt"][names[0]])) != (reference["k"], reference["seed"],
                                                                        len(reference["per_prompt"][names[0]])):
                raise SystemExit(f"{method}: scored with another k, seed or task count than the start")
        row = {"method": method, "seeds": len(found), "sampled_completions": int(samples)}
        for n in names:
            per_seed = [f["per_prompt"][n] for f in found]
            d = compare_scores(per_seed, [reference["per_prompt"][n]])
            row |= {n: float(np.mean(per_seed)), f"{n} diff": d.diff, f"{n} low": d.low, f"{n} high": d.high,
                    f"{n} per seed": [float(np.mean(s)) for s in per_seed]}
        rows.append(row)
    start_intervals = {n: score_interval(reference["per_prompt"][n]) for n in names}
    out.mkdir(parents=True, exist_ok=True)
    meta = {"tasks": len(reference["per_prompt"][names[0]]), "k": reference["k"], "samples": reference["samples"],
            "temperature": reference["temperature"], "start_intervals": start_intervals}
    (out / "results.json").write_text(json.dumps({"evaluation": meta, "rows": rows}, indent=2) + "\n")
    columns = ["method", "seeds", "sampled_completions", *[c for n in names for c in (n, f"{n} diff", f"{n} low",
                                                                                          f"{n} high")]]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(out / "pass_at_1.png", rows, names, meta)
    for row in rows:
        cells = "  ".join(f"{n} {row[n]:.3f}" + (f" ({row[f'{n} diff']:+.3f} [{row[f'{n} low']:+.3f}, "
                                                  f"{row[f'{n} high']:+.3f}])" if f"{n} diff" in row else "")
                          for n in names)
        print(f"{row['method']:>22s} ({row['seeds']} seeds, {row['sampled_completions']} sampled): {cells}")


def plot(path: Path, rows: list[dict], names: list[str], meta: dict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, row in enumerate(rows):
        x, y = row["sampled_completions"], row[names[0]]
        if "pass@1 diff" in row:
            err = [[row["pass@1 diff"] - row["pass@1 low"]], [row["pass@1 high"] - row["pass@1 diff"]]]
        else:
            _, low, high = meta["start_intervals"][names[0]]
            err = [[y - low], [high - y]]
        color = f"C{i}"
        ax.errorbar([x], [y], yerr=err, fmt="o", color=color, capsize=4, label=f"{row['method']} pass@1")
        ax.plot([x], [row[names[1]]], marker="^", color=color, linestyle="none", markerfacecolor="none")
    ax.plot([], [], marker="^", color="gray", linestyle="none", markerfacecolor="none",
            label=f"{names[1]} (same color)")
    ax.set_xlabel("completions sampled to train (sampling compute)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"pass@1 (95% paired interval vs the start) on {meta['tasks']} held-out tasks", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.74), ncol=2)  # between pass@1 and pass@8
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
