"""One-seed lever runs against the default recipe at the same N and seed: each run's whole-split loss and its paired
difference from the base run, with a 95% bootstrap interval over the validation split's windows (the same windows
in every run). This interval says how sure the split makes the difference for this seed; it says nothing of the
spread between seeds, which the benchmark's three-seed rows measure.
`python experiments/time_to_loss/levers.py OUT.json BASE_RUN_DIR NAME=RUN_DIR ...`"""

import json
import sys
from pathlib import Path

import numpy as np


def windows(run_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    record = json.loads((Path(run_dir) / "val_windows.json").read_text())
    summary = json.loads((Path(run_dir) / "metrics.json").read_text())
    return np.asarray(record["sums"]), np.asarray(record["counts"]), summary


def main(out: str, base_dir: str, levers: list[str]) -> None:
    base_sums, counts, base = windows(base_dir)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(counts), size=(2000, len(counts)))  # the same resamples for every lever
    rows = [{"lever": "base", "run": base_dir, "loss": base["val_loss_full"], "wall_s": base["wall_s"]}]
    for spec in levers:
        name, _, run_dir = spec.partition("=")
        sums, lever_counts, summary = windows(run_dir)
        if not np.array_equal(counts, lever_counts):
            raise SystemExit(f"{run_dir}: its validation windows differ from the base run's")
        diff = (sums - base_sums)[picks].sum(1) / counts[picks].sum(1)
        rows.append({"lever": name, "run": run_dir, "loss": summary["val_loss_full"], "wall_s": summary["wall_s"],
                     "diff": summary["val_loss_full"] - base["val_loss_full"],
                     "diff_ci95": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))]})
    Path(out).write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        ci = r.get("diff_ci95")
        print(f"{r['lever']:>12}  {r['loss']:.4f}  " + (f"{r['diff']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
