"""RouterMonitor: how a mixture of experts routes its tokens, per MoE layer, while training runs.

On a capture step it reads the routing the last training forward left in each MoE layer (the batch the model
just trained on, not a probe: load balance is a property of real batches). Per layer: each expert's share of
the token assignments and their coefficient of variation, the router's entropy, the mean top-1 probability,
the share of assignments that a capacity of 1.0 (N * top_k / E per expert) would have dropped, and the balancing
and z-losses. The statistics are reduced on the device and copied once; TensorBoard scalars
`router/layer{l}/...`, one history line per capture, and at the end of training a layer x expert load heatmap
over steps (`plots/router_load.png`) are written by the background worker.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from llmlab.config.monitors import RouterMonitorConfig
from llmlab.files import read_jsonl
from llmlab.model.moe import MoE
from llmlab.monitors.base import Door, Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history

LAYER_STATS = ("cv", "entropy", "top1_prob", "dropped_at_capacity", "aux_loss", "z_loss")


def moe_layers(model: nn.Module) -> list[tuple[int, MoE]]:
    """(block index, MoE) for every MoE layer in model, under any wrapper (compile, DDP)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, MoE):
            index = re.search(r"(\d+)\.mlp$", name)
            found.append((int(index[1]) if index else len(found), module))
    return found


@torch.no_grad()
def router_stats(moe: MoE) -> torch.Tensor | None:
    """(E + len(LAYER_STATS),) on the device: each expert's share of the assignments, then LAYER_STATS;
    None before the layer's first training forward."""
    last = moe.last
    if last is None:
        return None
    probs, chosen = last.probs, last.chosen
    n_experts, assignments = probs.shape[1], chosen.numel()
    counts = chosen.flatten().bincount(minlength=n_experts).float()
    share = counts / assignments
    cv = share.std(correction=0) / share.mean()
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    top1 = probs.amax(-1).mean()
    capacity = assignments / n_experts  # capacity factor 1.0: a fair share each
    dropped = (counts - capacity).clamp_min(0).sum() / assignments
    return torch.cat([share, torch.stack([cv, entropy, top1, dropped, last.aux_loss.float(), last.z_loss.float()])])


class RouterMonitor(Monitor):
    """In llmlab's trainer: built from monitors.router. In any loop training an llmlab MoE model:
    RouterMonitor(save_dir="router", every=50) as a context manager, with router.log(model, batch, step) after
    each step."""

    name = "router"

    def __init__(self, cfg: RouterMonitorConfig | None = None, *, save_dir: str | Path | None = None,
                 tensorboard: bool = False, **fields):
        cfg = cfg or RouterMonitorConfig(enabled=True, **fields)
        door = Door(Path(save_dir), tensorboard) if save_dir is not None else None
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)), door)
        self.cfg = cfg
        self.records: list[dict] = []

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        self.layers = moe_layers(ctx.model)
        if not self.layers:
            raise ValueError(f"RouterMonitor: {type(ctx.model).__name__} has no mixture-of-experts layers "
                             "(model.moe.experts=0)")
        self.dir = self.output_dir(ctx)
        self.plots_dir = (self.door.save_dir if self.door else ctx.out_dir.parent) / "plots"
        history = self.dir / "history.jsonl"
        truncate_history(history, ctx.resume_step)
        self.records = read_jsonl(history) if ctx.resume_step is not None else []

    def on_step_end(self, info: StepInfo) -> None:
        if not self.schedule.due(info.step):
            return
        reduced = [(i, router_stats(moe)) for i, moe in self.layers]
        reduced = [(i, s) for i, s in reduced if s is not None]
        if not reduced:
            return
        values = torch.stack([s for _, s in reduced]).cpu().numpy()  # the one copy: (layers, E + stats)
        record = {**info.as_dict, "timestamp": time.time(), "layers": {}}
        scalars = {}
        for (layer, _), row in zip(reduced, values, strict=True):
            n_experts = len(row) - len(LAYER_STATS)
            stats = dict(zip(LAYER_STATS, map(float, row[n_experts:]), strict=True))
            record["layers"][f"layer{layer}"] = {"load": [float(v) for v in row[:n_experts]], **stats}
            scalars.update({f"router/layer{layer}/{key}": value for key, value in stats.items()})
            scalars[f"router/layer{layer}/max_load"] = float(row[:n_experts].max()) * n_experts
        if self.ctx.sinks is not None:
            self.ctx.sinks.log_scalars(info.step, scalars)
        self.records.append(record)
        self.submit(lambda: append_history(self.dir / "history.jsonl", record))

    def on_train_end(self, step: int) -> None:
        if self.cfg.plots and self.records:
            records = list(self.records)
            self.submit(lambda: self._heatmap(records))

    def _heatmap(self, records: list[dict]) -> None:
        steps = [r["step"] for r in records]
        names = sorted(records[-1]["layers"], key=lambda n: int(n.removeprefix("layer")))
        loads = {name: np.array([r["layers"][name]["load"] for r in records if name in r["layers"]]).T
                 for name in names}  # (E, captures): share of assignments
        from llmlab.monitors.plots import render, router_load_figure  # matplotlib only when drawing

        render(router_load_figure(steps, loads), self.plots_dir / "router_load.png")
