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
from pathlib import Path

import numpy as np
import torch

from llmlab.config.monitors import DistributionMonitorConfig
from llmlab.monitors.attention import select_layers
from llmlab.monitors.base import Door, Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history
from llmlab.monitors.stats import downsample_2d, tensor_histograms, tensor_stats

# the headline statistics that also go to TensorBoard as scalars
SCALARS = {"weights": ("std", "abs_max", "update_ratio"), "gradients": ("l2_norm", "abs_max"),
           "activations": ("std", "abs_max", "kurtosis", "sparsity")}


def chosen_names(names: list[str], layers: list[int] | None, patterns: list[str] | None,
                 prefix: str | None = "blocks") -> list[str]:
    """Names inside the chosen layers (all names when layers is None) that match any pattern."""
    keep = []
    for name in names:
        if layers is not None and not any(name.startswith(f"{prefix}.{i}.") or name == f"{prefix}.{i}" for i in layers):
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        keep.append(name)
    return keep


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
    """In llmlab's trainer: built from monitors.distribution. In any loop: DistributionMonitor(save_dir="dist",
    every=100, tensorboard=True) as a context manager, with dist.after_backward(model, step) before the
    optimizer step and dist.log(model, batch, step, loss=...) after it. A model with decoder layers (llmlab,
    transformers Llama/Qwen2/GPT-2) has its layers' attention, MLP and output watched; for any other nn.Module
    give `modules` patterns or an `activation_filter(name, module)` to choose the modules whose outputs count.
    Activations are caught by hooks during the forward of a capture step, registered at the log() before it
    (the very first step's activations are only caught by a forward after its log() call)."""

    name = "distribution"

    def __init__(self, cfg: DistributionMonitorConfig | None = None, *, save_dir: str | Path | None = None,
                 tensorboard: bool = False, activation_filter=None, **fields):
        if cfg is None:
            fields.setdefault("histograms", tensorboard)
            cfg = DistributionMonitorConfig(enabled=True, **fields)
        door = Door(Path(save_dir), tensorboard) if save_dir is not None else None
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)), door)
        self.cfg = cfg
        self.activation_filter = activation_filter
        self._hooks: list = []
        self._first_step = 0  # the first step whose forward the hooks can see (on_train_start sets it)
        self._captures: dict[str, TensorCapture] = {}
        self._before_step: dict[str, torch.Tensor] = {}
        self.track_updates = True  # update-to-weight ratios need an optimizer step (analyze takes none)

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        self._first_step = step + 1
        model, cfg, view = ctx.model, self.cfg, ctx.view
        if cfg.layers is not None and view.prefix is None:
            raise ValueError(f"layers: {type(model).__name__} has no decoder layers llmlab knows; choose with modules")
        layers = None if cfg.layers is None else select_layers(cfg.layers, len(view.layers),
                                                                 "monitors.distribution.layers")
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in chosen_names(list(params), layers, cfg.modules, view.prefix)}
        if view.prefix is not None:
            modules = view.activation_modules()
            self.modules = {n: modules[n] for n in chosen_names(list(modules), layers, cfg.modules, view.prefix)}
        else:  # a plain module: only the modules the user names or picks
            named = dict(model.named_modules())
            chosen = chosen_names([n for n in named if n], None, cfg.modules) if cfg.modules else []
            picked = [n for n, m in named.items() if n and self.activation_filter and self.activation_filter(n, m)]
            self.modules = {n: named[n] for n in dict.fromkeys([*chosen, *picked])}
        self.dir = self.output_dir(ctx)
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
        hooked = bool(self._hooks) and step > self._first_step  # any loop: the first step's forward came before
        # its hooks could go on (the door starts at the first after_backward)
        self._remove_hooks()  # the forward of this step is done
        if hooked and self._captures and not self._captures["activations"].stats:
            self.ctx.alerts.alert(step, "no_activations", self.name, "no training-mode forward ran this step, so no "
                                  "activation was recorded (a model in eval mode, as from_pretrained returns it? call "
                                  "model.train() before the loop: eval-mode forwards are probes, never counted)")
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
        if self.ctx.sinks is not None:
            self.ctx.sinks.log_scalars(info.step, {
                f"{kind}/{name}/{stat}": float(stats[stat]) for kind, capture in captures.items()
                for name, stats in capture.stats.items() for stat in SCALARS[kind] if stat in stats})
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
        sinks, jobs = self.ctx.sinks, []
        for kind, capture in captures.items():
            for name, (counts, edges) in capture.histograms.items():
                if sinks is not None and self.cfg.histograms:
                    sinks.log_histogram(step, f"{kind}/{name}", counts, edges, capture.stats[name])
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
