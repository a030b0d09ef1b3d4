"""The optimizers study's figure and tables, from a sweep directory of +experiment=optimizers.

    python experiments/optimizers/plot.py <sweep dir> <figure.png> [target val loss, default 0.591]

Prints, per variant and seed: the final val loss, the first evaluation step at or below the target (evaluations
every 50 steps), and the val loss at each evaluation; draws val loss against steps, one line per job.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

COLORS = {"adamw_cosine": "tab:blue", "adamw_wsd": "tab:cyan", "muon_cosine": "tab:red", "muon_wsd": "tab:orange"}


def jobs(sweep: Path):
    for overrides in sorted(sweep.glob("*/.hydra/overrides.yaml")):
        job = overrides.parent.parent
        summary = job / "metrics.json"
        if not summary.is_file() or json.loads(summary.read_text())["status"] != "completed":
            continue  # still running, or stopped: not a result
        said = dict(o.lstrip("+").split("=", 1) for o in yaml.safe_load(overrides.read_text()))
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
        yield said.get("experiment/optimizers", job.name), said.get("seed", "0"), evals


def main(sweep: Path, out: Path, target: float) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    print(f"| variant | seed | final val loss | first step <= {target:.3f} |")
    print("|---|---|---|---|")
    for variant, seed, evals in sorted(jobs(sweep)):
        steps, losses = zip(*evals, strict=True)
        reached = next((s for s, v in evals if v <= target), None)
        print(f"| {variant} | {seed} | {losses[-1]:.4f} | {reached or 'not reached'} |")
        ax.plot(steps, losses, color=COLORS.get(variant, "gray"), linestyle="-" if seed == "0" else "--",
                marker="o", markersize=3, label=f"{variant} seed {seed}")
    ax.axhline(target, color="black", linewidth=0.8, linestyle=":", label=f"old default's final ({target})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 0.6))
    ax.set_title(f"{sweep.name}: validation loss against steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.591)
