"""DPO's curves on on-policy pairs: the chosen and rejected replies' log-probabilities and the reward accuracy.

    python experiments/post_training/dpo_curves.py OUT_DIR LABEL=RUN ...

Reads each run's metrics.jsonl; writes OUT_DIR/dpo_curves.csv (step, run, metric, value) and dpo_curves.png.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = (("dpo/chosen_logp", "chosen reply: log-prob (nats)"),
           ("dpo/rejected_logp", "rejected reply: log-prob (nats)"),
           ("dpo/reward_accuracy", "reward accuracy (train pairs)"))


def main(out: Path, runs: list[str]) -> None:
    rows = []
    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 3.8))
    for i, spec in enumerate(runs):
        label, run = spec.split("=", 1)
        lines = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]
        for ax, (metric, title) in zip(axes, METRICS):
            points = [(r["step"], r[metric]) for r in lines if metric in r]
            rows += [{"step": s, "run": label, "metric": metric, "value": v} for s, v in points]
            ax.plot(*zip(*points), color=f"C{i}", label=label, marker=".")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "dpo_curves.png", dpi=100)
    with open(out / "dpo_curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "run", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
