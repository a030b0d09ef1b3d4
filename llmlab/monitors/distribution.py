"""DistributionMonitor: per-layer statistics of weights, activations and gradients as training runs.

On a capture step N:
- activations: forward hooks, registered at the end of step N-1 and removed after the first
  micro-batch of step N, reduce each module's output on the device;
- gradients: read after backward and before the optimizer step (before clipping);
- weights: read after the optimizer step, with the update-to-weight ratio ||w_N - w_{N-1}|| / ||w_{N-1}||,
  the per-layer sign of a learning rate that is too high (>~1e-2) or too low (<~1e-4).
Only statistics, histogram counts and downsampled heatmaps leave the device.
"""

from __future__ import annotations

import fnmatch
import json
import time

import numpy as np
import torch
import torch.nn as nn

from llmlab.config.monitors import DistributionMonitorConfig
from llmlab.monitors.attention import select_layers
from llmlab.monitors.base import Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history
from llmlab.monitors.stats import downsample_2d, tensor_histograms, tensor_stats

# the headline statistics that also go to TensorBoard as scalars
SCALARS = {"weights": ("std", "abs_max", "update_ratio"), "gradients": ("l2_norm", "abs_max"),
           "activations": ("std", "abs_max", "kurtosis", "sparsity")}


def chosen_names(names: list[str], layers: list[int] | None, patterns: list[str] | None) -> list[str]:
    """Names inside the chosen blocks (all names when layers is None) that match any pattern."""
    keep = []
    for name in names:
        if layers is not None and not any(name.startswith(f"blocks.{i}.") or name == f"blocks.{i}" for i in layers):
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        keep.append(name)
    return keep


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Each block's attention output, MLP output and the block output (the residual stream)."""
    found = {}
    for i, block in enumerate(model.blocks):
        found[f"blocks.{i}.attn"] = block.attn
        found[f"blocks.{i}.mlp"] = block.mlp
        found[f"blocks.{i}"] = block
    return found


class TensorCapture:
    """What one capture took off the device: statistics, histogram counts and heatmap matrices."""

    def __init__(self, cfg: DistributionMonitorConfig):
        self.cfg = cfg
        self.stats: dict[str, dict[str, float]] = {}
        self.histograms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.heatmaps: dict[str, np.ndarray] = {}

    def add(self, tensors: dict[str, torch.Tensor], heatmap_of=lambda t: t) -> None:
        self.stats.update(tensor_stats(tensors))
        if self.cfg.histograms or self.cfg.plots:
            self.histograms.update(tensor_histograms(tensors, self.cfg.bins))
        if self.cfg.plots and self.cfg.heatmaps:
            for name, t in tensors.items():
                matrix = heatmap_of(t)
                if matrix.dim() == 2:
                    self.heatmaps[name] = downsample_2d(matrix, self.cfg.heatmap_max_dim).cpu().numpy()


class DistributionMonitor(Monitor):
    name = "distribution"

    def __init__(self, cfg: DistributionMonitorConfig):
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)))
        self.cfg = cfg
        self._hooks: list = []
        self._captures: dict[str, TensorCapture] = {}
        self._before_step: dict[str, torch.Tensor] = {}
        self.track_updates = True  # update-to-weight ratios need an optimizer step (analyze takes none)

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        model, cfg = ctx.model, self.cfg
        layers = None if cfg.layers is None else select_layers(cfg.layers, len(model.blocks),
                                                                 "monitors.distribution.layers")
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in chosen_names(list(params), layers, cfg.modules)}
        modules = activation_modules(model)
        self.modules = {n: modules[n] for n in chosen_names(list(modules), layers, cfg.modules)}
        self.dir = ctx.out_dir / "distribution"
        truncate_history(self.dir / "history.jsonl", ctx.resume_step)
        if self.schedule.due(step + 1):
            self._register_hooks()

    # ---- capture ---------------------------------------------------------------------------
    def _register_hooks(self) -> None:
        self._captures = {kind: TensorCapture(self.cfg) for kind in ("weights", "activations", "gradients")}
        if not self.cfg.activations:
            return
        seen: set[str] = set()

        def hook(name):
            def capture(module, inputs, output):
                # probes and evaluation run in eval mode; gradient accumulation: the first micro-batch is enough
                if not module.training or name in seen:
                    return
                seen.add(name)
                out = output[0] if isinstance(output, tuple) else output
                # heatmap: tokens x features of the first sequence
                self._captures["activations"].add({name: out}, heatmap_of=lambda t: t[0] if t.dim() == 3 else t)
            return capture

        self._hooks = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def on_after_backward(self, step: int) -> None:
        if not self.schedule.due(step):
            return
        self._remove_hooks()  # the forward of this step is done
        if not self._captures:  # resumed onto a capture step: hooks were never registered
            self._captures = {kind: TensorCapture(self.cfg) for kind in ("weights", "activations", "gradients")}
        if self.cfg.gradients:
            grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
            self._captures["gradients"].add(grads)
        if self.cfg.weights and self.track_updates:
            self._before_step = {n: p.detach().clone() for n, p in self.params.items()}

    def on_step_end(self, info: StepInfo) -> None:
        if self.schedule.due(info.step) and self._captures:
            self._finish(info)
        if self.schedule.due(info.step + 1):
            self._register_hooks()

    def on_train_end(self, step: int) -> None:
        self._remove_hooks()

    def _finish(self, info: StepInfo) -> None:
        captures, self._captures = self._captures, {}
        if self.cfg.weights:
            weights = {n: p.detach() for n, p in self.params.items()}
            captures["weights"].add(weights)
            before = self._before_step
            if before:
                ratios = torch.stack([update_ratio(weights[n], before[n])
                                      for n in weights]).cpu().tolist()
                for n, r in zip(weights, ratios, strict=True):
                    captures["weights"].stats[n]["update_ratio"] = r
            self._before_step = {}
        record = self._record(info, captures)
        writer = self.ctx.writer
        if writer is not None:
            for kind, capture in captures.items():
                for name, stats in capture.stats.items():
                    for stat in SCALARS[kind]:
                        if stat in stats:
                            writer.add_scalar(f"{kind}/{name}/{stat}", stats[stat], info.step)
        self.submit(lambda: self._write(info.step, record, captures))

    def _record(self, info: StepInfo, captures: dict[str, TensorCapture]) -> dict:
        epoch = info.step / self.ctx.steps_per_epoch if self.ctx.steps_per_epoch else None
        return {**info.as_dict, "epoch": epoch, "timestamp": time.time(),
                **{kind: capture.stats for kind, capture in captures.items()}}

    # ---- files (background worker) -----------------------------------------------------------
    def _write(self, step: int, record: dict, captures: dict[str, TensorCapture]) -> None:
        step_dir = self.dir / f"step_{step}"
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / "layer_statistics.json").write_text(json.dumps(record, indent=1))
        append_history(self.dir / "history.jsonl", record)
        writer, jobs = self.ctx.writer, []
        for kind, capture in captures.items():
            for name, (counts, edges) in capture.histograms.items():
                if writer is not None and self.cfg.histograms:
                    write_histogram(writer, f"{kind}/{name}", counts, edges, capture.stats[name], step)
                if self.cfg.plots:
                    jobs.append(("histogram", step_dir / kind / f"{name}.png", False,
                                 {"counts": counts, "edges": edges, "title": f"{kind} {name} (step {step})",
                                  "stats": capture.stats[name]}))
            for name, matrix in capture.heatmaps.items():
                jobs.append(("heatmap", step_dir / kind / f"{name}_heatmap.png", False,
                             {"matrix": matrix, "title": f"{kind} {name} (step {step})"}))
        self.ctx.figures.draw_all(jobs)


def update_ratio(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """||after - before|| / ||before||: how far one optimizer step moved a weight, relative to its size."""
    return (after - before).float().norm() / before.float().norm().clamp_min(1e-12)


def write_histogram(writer, tag: str, counts: np.ndarray, edges: np.ndarray, stats: dict, step: int) -> None:
    """A TensorBoard histogram from counts made on the device: no tensor ever reaches numpy."""
    num = float(counts.sum())
    if num == 0:
        return
    # sum and sum of squares from the exact moments: sum = n*mean, sumsq = n*(std^2 + mean^2)
    mean, std = stats["mean"], stats["std"]
    writer.add_histogram_raw(tag, min=stats["min"], max=stats["max"], num=num, sum=num * mean,
                             sum_squares=num * (std**2 + mean**2), bucket_limits=edges[1:].tolist(),
                             bucket_counts=counts.tolist(), global_step=step)
