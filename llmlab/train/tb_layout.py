"""What TensorBoard opens on: a custom-scalars layout and a link that pins the curves that matter.

A run logs hundreds of scalar tags (every monitor's, per layer), and TensorBoard's Time Series tab lists them in
alphabetical groups, opening the first two: the monitors' `activations/` and `attention/`, not the loss. Two
remedies that leave every tag's name as metrics.jsonl spells it:

- the Custom Scalars tab gets a layout (written once per run): training first (loss, bits per byte, learning
  rate, throughput, gradient norm), then the stage's own objective and evaluations, then one section per monitor
  with the layers of each statistic in one chart;
- `pinned_url` is a TensorBoard address whose Time Series tab starts with those curves pinned at the top.
"""

from __future__ import annotations

import json
from urllib.parse import quote

M = "Multiline"  # one chart, a line per tag that matches one of its regular expressions


def training_section(per_token: bool) -> dict:
    """per_token: the loss is in nats per token (the whole split and bits per byte are logged too)."""
    charts = {"loss (train, validation" + (", whole split)" if per_token else ")"):
              [M, [r"^train/loss$", r"^val/loss$", *([r"^val/loss_full$"] if per_token else [])]]}
    if per_token:
        charts["bits per byte (validation, whole split)"] = [M, [r"^val/bpb$", r"^val/bpb_full$"]]
    return {**charts,
            "learning rate (AdamW; Muon)": [M, [r"^train/lr$", r"^train/lr_muon$"]],
            "throughput (tokens/s)": [M, [r"^perf/tokens_per_s$"]],
            "gradient norm (before clipping)": [M, [r"^train/grad_norm$"]]}


EVALUATIONS = {"task accuracy, pass@1, pass@k": [M, [r"^eval/task_accuracy", r"^eval/pass@"]]}

# monitor name -> its charts; layers (or tensors) of one statistic share a chart
MONITORS = {
    "attention": {f"attention {s}": [M, [rf"^attention/layer\d+/{s}$"]]
                  for s in ("entropy", "sink", "distance", "max")},
    "distribution": {
        "weights: std": [M, [r"^weights/.*/std$"]],
        "weights: update / weight ratio": [M, [r"^weights/.*/update_ratio$"]],
        "gradients: L2 norm": [M, [r"^gradients/.*/l2_norm$"]],
        "activations: std": [M, [r"^activations/.*/std$"]],
        "activations: kurtosis": [M, [r"^activations/.*/kurtosis$"]],
    },
    "health": {"dead MLP units (share)": [M, [r"^health/"]]},
    "circuits": {"copying and in-context learning": [M, [r"^circuits/(copy_accuracy|icl_loss_drop)$"]],
                 "logit lens (loss decoding each layer)": [M, [r"^circuits/logit_lens/"]],
                 "induction score per head": [M, [r"^circuits/layer\d+/head\d+/induction$"]],
                 "previous-token score per head": [M, [r"^circuits/layer\d+/head\d+/prev_token$"]]},
    "router": {f"router {s}": [M, [rf"^router/layer\d+/{s}$"]]
               for s in ("max_load", "cv", "entropy", "aux_loss")},
}


def custom_scalars_layout(per_token: bool, objective: dict, monitors: list[str], evaluations: bool) -> dict:
    """The layout of the Custom Scalars tab, in the order it shows: training, the stage's objective (its charts,
    Stage.charts), evaluation, monitors."""
    layout = {"1. training": training_section(per_token)}
    if objective:
        layout["2. objective"] = objective
    if evaluations:
        layout["3. evaluation"] = EVALUATIONS
    for name in monitors:
        if name in MONITORS:
            layout[f"monitor: {name}"] = MONITORS[name]
    return layout


def pinned_keys(per_token: bool, objective: list[str] = ()) -> list[str]:
    """The curves pinned at the top of the Time Series tab by pinned_url: the loss, bits per byte where the loss is
    per token, the learning rate, throughput, then the stage's own (Stage.pinned)."""
    return ["train/loss", "val/loss", *(["val/bpb"] if per_token else []), "train/lr", "perf/tokens_per_s",
            *objective]


def pinned_url(keys: list[str], port: int = 6006) -> str:
    """A TensorBoard address (run it with --port port) whose Time Series tab opens with keys pinned first."""
    cards = json.dumps([{"plugin": "scalars", "tag": key} for key in keys], separators=(",", ":"))
    return f"http://localhost:{port}/?pinnedCards={quote(cards)}#timeseries"
