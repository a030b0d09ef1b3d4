"""The optimizers study's learning-rate sweeps in one figure: final val loss against the peak lr, one line per
optimizer and schedule, from each job's metrics.json and config_resolved.yaml.

    python experiments/optimizers/plot_lr.py <figure.png> <sweep dir> [<sweep dir> ...]
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def main(out: Path, sweeps: list[Path]) -> None:
    lines = defaultdict(list)
    for sweep in sweeps:
        for summary in sorted(sweep.glob("*/metrics.json")):
            job = json.loads(summary.read_text())
            if job["status"] != "completed":
                continue
            trainer = yaml.safe_load((summary.parent / "config_resolved.yaml").read_text())["trainer"]
            muon = trainer["optimizer"] == "muon"
            lr = trainer["muon"]["lr"] if muon else trainer["lr"]
            lines[f"{trainer['optimizer']} {trainer['schedule']}"].append((lr, job["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(lines.items()):
        lrs, losses = zip(*sorted(points), strict=True)
        ax.plot(lrs, losses, marker="o", label=label + (" (Muon's lr)" if label.startswith("muon") else ""))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (Muon's for muon: its AdamW part stays at 3e-3)")
    ax.set_ylabel("val loss after 200 steps (nats per token)")
    ax.set_title("learning-rate sweeps, 200 steps, seed 0")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
