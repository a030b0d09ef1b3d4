"""The GRPO runs' curves (reward, held-out pass@1, zero-spread share, KL, entropy, completion length), from their
metrics.jsonl; the SFT start's held-out pass@1 drawn as the line to beat.

    python experiments/grpo/plot_curves.py experiments/grpo/grpo_curves.png 0.307 "plain=outputs/grpo_base" \\
        "dynamic sampling=outputs/grpo_dyn"
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmlab.monitors.plots import render
from llmlab.plots import metric_panels, read_metrics

PANELS = [
    ("reward (mean over the samples trained on)", ["grpo/reward_mean"]),
    ("held-out pass@1 (greedy, the run's 100 eval tasks)", ["eval/pass@1"]),
    ("share of groups drawn with zero spread", ["grpo/zero_spread_share"]),
    ("KL to the start (k3, per token)", ["grpo/kl"]),
    ("policy entropy (nats per sampled token)", ["grpo/entropy"]),
    ("completion length (tokens)", ["grpo/completion_length"]),
]


def main(out: str, start: str, *runs: str) -> None:
    """start: the SFT run's held-out pass@1, drawn as the line to beat."""
    named = dict(run.split("=", 1) for run in runs)
    figure = metric_panels({label: read_metrics(path) for label, path in named.items()}, PANELS,
                           title="GRPO from the SFT start on the sum family (x: optimizer steps)")
    accuracy = figure.axes[1]
    accuracy.axhline(float(start), color="gray", linestyle="--", linewidth=1, label=f"SFT start ({start})")
    accuracy.legend(fontsize=7)
    render(figure, Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
