"""The GRPO runs' curves in docs/results/post-training.md (reward, KL, entropy, task accuracy, ...), from their
metrics.jsonl.

    python experiments/grpo/plot_curves.py experiments/grpo/grpo_curves.png 0.35 "lr 1e-4=outputs/grpo1" "lr 5e-4=outputs/grpo2"
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmlab.monitors.plots import render
from llmlab.plots import metric_panels, read_metrics

PANELS = [
    ("reward (mean over samples)", ["grpo/reward_mean"]),
    ("held-out task accuracy (greedy)", ["eval/task_accuracy"]),
    ("KL to the start (k3, per token)", ["grpo/kl"]),
    ("policy entropy (nats per sampled token)", ["grpo/entropy"]),
    ("groups with zero spread, per step", ["grpo/zero_spread_groups"]),
    ("completion length (tokens)", ["grpo/completion_length"]),
]


def main(out: str, start: str, *runs: str) -> None:
    """start: the SFT run's held-out task accuracy, drawn as the line to beat."""
    named = dict(run.split("=", 1) for run in runs)
    figure = metric_panels({label: read_metrics(path) for label, path in named.items()}, PANELS,
                           title="GRPO from the SFT run on the embedded tasks (steps; batch = prompts per step)")
    accuracy = figure.axes[1]
    accuracy.axhline(float(start), color="gray", linestyle="--", linewidth=1, label=f"SFT start ({start})")
    accuracy.legend(fontsize=7)
    render(figure, Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
