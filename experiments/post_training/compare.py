"""The post-training comparison: each method's held-out pass@1 and pass@k against the SFT start, paired.

    python experiments/post_training/compare.py OUT_DIR START METHOD=SAMPLES=RUN[,RUN...] ...

START and every RUN are run directories that `python -m llmlab.evaluate run=<dir> data=tasks k=8 ...` has scored
with the same data, k and seed (so the same prompts and draws): their evaluation holds per-prompt scores.
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
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from llmlab.sweep.intervals import compare_scores, score_interval  # noqa: E402


def scores(run: str) -> dict:
    """The pass@k scores of a run's newest evaluation that has them (<run>/evaluation/*.json; evaluation.json in
    run directories evaluated before one result was kept per checkpoint), or of an evaluation file itself."""
    path = Path(run)
    files = [path] if path.is_file() else [*path.glob("evaluation/*.json"), path / "evaluation.json"]
    newest_last = sorted((f for f in files if f.is_file()), key=lambda f: f.stat().st_mtime)
    found = [record["pass_at_k"] for record in map(json.loads, (f.read_text() for f in newest_last))
             if "pass_at_k" in record]
    if not found:
        raise SystemExit(f"{run}: no evaluation with pass@k: run python -m llmlab.evaluate run={run} k=8 first")
    return found[-1]


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
    """Left: pass@1 (filled) and pass@k (hollow) against the completions sampled to train, methods spread a little
    sideways so none hides another. Right: each method's paired pass@1 difference from the start with its 95%
    interval, the +0.05 target dashed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.1, 1]})
    spread = 0.02 * max(r["sampled_completions"] for r in rows) or 1.0
    same_x = [[r for r in rows if r["sampled_completions"] == row["sampled_completions"]] for row in rows]
    for i, row in enumerate(rows):  # methods at the same sampling compute are spread sideways, the others stay put
        peers = same_x[i]
        x = row["sampled_completions"] + (peers.index(row) - (len(peers) - 1) / 2) * spread
        left.plot([x], [row[names[0]]], "o", color=f"C{i}", label=row["method"])
        left.plot([x], [row[names[1]]], "^", color=f"C{i}", markerfacecolor="none")
    left.plot([], [], "o", color="black", label=names[0])
    left.plot([], [], "^", color="black", markerfacecolor="none", label=names[1])
    left.set_xlabel("completions sampled to train (sampling compute)")
    left.set_ylabel(f"held-out accuracy ({meta['tasks']} tasks)")
    left.set_ylim(0, 1.02)
    left.set_title(f"{names[0]} (filled) and {names[1]} (hollow)", fontsize=10)
    left.grid(alpha=0.3)
    compared = [r for r in rows if f"{names[0]} diff" in r]
    for j, row in enumerate(compared):
        i = rows.index(row)
        d, low, high = row[f"{names[0]} diff"], row[f"{names[0]} low"], row[f"{names[0]} high"]
        right.errorbar([d], [j], xerr=[[d - low], [high - d]], fmt="o", color=f"C{i}", capsize=4)
    right.axvline(0, color="black", linewidth=0.8)
    right.axvline(0.05, color="gray", linestyle="--", linewidth=0.8)
    right.set_title("gain over the SFT start (dashed: the +0.05 target)", fontsize=10)
    right.set_yticks(range(len(compared)), [f"{r['method']}\n({r['seeds']} seed{'s' * (r['seeds'] > 1)})"
                                            for r in compared], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel(f"{names[0]} minus the SFT start's (paired, 95% interval)")
    right.grid(alpha=0.3, axis="x")
    right.xaxis.set_major_locator(matplotlib.ticker.MultipleLocator(0.05))
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
