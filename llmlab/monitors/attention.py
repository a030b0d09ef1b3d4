"""AttentionMonitor: what every head attends to, on a fixed probe batch, while training runs.

On a capture step the model runs once more, in eval mode and without gradients, on a probe taken
from the validation data; that forward computes attention probabilities explicitly (training keeps
SDPA, which never returns them). Statistics are reduced on the device and copied once; figures and
files are made by the background worker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from llmlab.config.errors import ConfigError
from llmlab.config.monitors import AttentionMonitorConfig, ProbeConfig
from llmlab.monitors.base import Door, Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history

HEAD_STATS = ("entropy", "max", "mean", "std", "sink", "distance")


@torch.no_grad()
def attention_stats(probs: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) causal attention -> (H, len(HEAD_STATS)) averaged over sequences and query positions.

    entropy: nats per query row; max: the largest weight in a row; mean/std: of the visible weights;
    sink: weight on the first token; distance: expected query-key distance in tokens.
    """
    p = probs.float()
    T = p.shape[-1]
    visible = torch.ones(T, T, dtype=torch.bool, device=p.device).tril()
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (B, H, T)
    pos = torch.arange(T, device=p.device, dtype=p.dtype)
    distance = (p * (pos[:, None] - pos[None, :]).clamp_min(0)).sum(-1)  # (B, H, T)
    n_visible = visible.sum()
    mean = (p * visible).sum((-1, -2)) / n_visible  # (B, H)
    var = (((p - mean[..., None, None]) * visible) ** 2).sum((-1, -2)) / n_visible
    return torch.stack([
        entropy.mean((0, 2)), p.amax(-1).mean((0, 2)), mean.mean(0), var.sqrt().mean(0),
        p[..., 0].mean((0, 2)), distance.mean((0, 2)),
    ], dim=-1)


def select_layers(layers: list[int] | None, n_layers: int, field: str) -> list[int]:
    """Normalise layer indices (negative counts from the end); an index out of range is a config error."""
    if layers is None:
        return list(range(n_layers))
    chosen = []
    for i in layers:
        if not -n_layers <= i < n_layers:
            raise ConfigError(f"{field}: layer {i} out of range for a model with {n_layers} layers")
        chosen.append(i % n_layers)
    return sorted(set(chosen))


def token_label(text: str) -> str:
    return text.replace("\n", "\\n").replace(" ", "·") or "∅"


class AttentionMonitor(Monitor):
    """In llmlab's trainer: built from monitors.attention. In any loop (llmlab models, transformers Llama, Qwen2,
    GPT-2 causal LMs): AttentionMonitor(save_dir="attn", every=100, layers=[0, -1]) as a context manager, with
    attn.log(model, batch, step, loss=...) after each step; the first batch's first rows become the fixed probe."""

    name = "attention"

    def __init__(self, cfg: AttentionMonitorConfig | None = None, *, save_dir: str | Path | None = None,
                 tensorboard: bool = False, decode_token=None, probe: ProbeConfig | None = None, **fields):
        cfg = cfg or AttentionMonitorConfig(enabled=True, **fields)
        door = Door(Path(save_dir), tensorboard, decode_token) if save_dir is not None else None
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)), door, probe or ProbeConfig())
        self.cfg = cfg
        self.layers: list[int] = []

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        if ctx.probe is None:
            raise ValueError("AttentionMonitor needs a probe batch")
        if ctx.view.attention is None:
            raise ValueError(f"AttentionMonitor: {type(ctx.model).__name__} has no decoder layers it knows")
        self.layers = select_layers(self.cfg.layers, len(ctx.view.layers), "monitors.attention.layers")
        self.dir = self.output_dir(ctx)
        self.probe = ctx.probe  # the run cut it to monitors.probe's sequences x tokens
        self.labels = None
        if ctx.decode_token is not None and self.probe.shape[1] <= self.cfg.label_max_tokens:
            self.labels = [token_label(ctx.decode_token(t)) for t in self.probe[0].tolist()]
        truncate_history(self.dir / "history.jsonl", ctx.resume_step)

    def on_step_end(self, info: StepInfo) -> None:
        if not self.schedule.due(info.step):
            return
        probs = self.ctx.probe_forward(info.step).attention
        chosen = [probs[i] for i in self.layers]
        stats = torch.stack([attention_stats(p) for p in chosen]).cpu().numpy()  # (L, H, stats)
        first = None
        if self.cfg.images or self.cfg.maps or self.cfg.save_raw:
            first = torch.stack([p[0] for p in chosen]).float().cpu().numpy()  # (L, H, T, T), sequence 0
        record = self._record(info, stats)
        if self.ctx.sinks is not None:
            self.ctx.sinks.log_scalars(info.step, {
                f"attention/layer{layer}/{name}": float(layer_stats[:, k].mean())
                for layer, layer_stats in zip(self.layers, stats, strict=True) for k, name in enumerate(HEAD_STATS)})
        self.submit(lambda: self._write(info.step, record, first))

    def _record(self, info: StepInfo, stats: np.ndarray) -> dict:
        layers = {}
        for layer, layer_stats in zip(self.layers, stats, strict=True):
            heads = [dict(zip(HEAD_STATS, map(float, row), strict=True)) for row in layer_stats]
            layers[f"layer{layer}"] = {"mean": dict(zip(HEAD_STATS, map(float, layer_stats.mean(0)), strict=True)),
                                       "heads": heads}
        epoch = info.step / self.ctx.steps_per_epoch if self.ctx.steps_per_epoch else None
        return {**info.as_dict, "epoch": epoch, "timestamp": time.time(),
                "probe_shape": list(self.probe.shape), "layers": layers}

    def _write(self, step: int, record: dict, first: np.ndarray | None) -> None:
        step_dir = self.dir / f"step_{step}"
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / "statistics.json").write_text(json.dumps(record, indent=1))
        append_history(self.dir / "history.jsonl", record)
        if first is None:
            return
        if self.cfg.save_raw:
            np.savez_compressed(step_dir / "attention.npz",
                                **{f"layer{layer}": first[i] for i, layer in enumerate(self.layers)})
        if self.cfg.images:
            self._figures(step, step_dir, first)
        elif self.cfg.maps:
            self._maps(step, step_dir, first)

    def _maps(self, step: int, step_dir, first: np.ndarray) -> None:
        """The head-averaged maps of the first and last chosen layer: what a newcomer looks at first, for the cost
        of two small figures per capture."""
        ends = sorted({0, len(self.layers) - 1})
        self._draw(step, [("attention", step_dir / f"layer{self.layers[i]}_avg.png", True,
                           {"probs": first[i].mean(0), "title": f"layer {self.layers[i]} avg (step {step})",
                            "labels": self.labels}) for i in ends])

    def _draw(self, step: int, jobs: list) -> None:
        images = self.ctx.figures.draw_all(jobs)
        if self.ctx.sinks is not None:
            for (_, path, _, _), image in zip(jobs, images, strict=True):
                self.ctx.sinks.log_image(step, f"attention/{path.stem}", image)

    def _figures(self, step: int, step_dir, first: np.ndarray) -> None:
        heads, labels = self.cfg.heads, self.labels
        jobs = []  # (figure, path, send to TensorBoard, kwargs)
        for i, layer in enumerate(self.layers):
            maps = first[i]  # (H, T, T)
            if heads == "average":
                shown = {"avg": maps.mean(0)}
            else:
                chosen = range(len(maps)) if heads == "all" else [h % len(maps) for h in heads]
                shown = {f"head{h}": maps[h] for h in chosen}
            for label, matrix in shown.items():
                jobs.append(("attention", step_dir / f"layer{layer}_{label}.png", True,
                             {"probs": matrix, "title": f"layer {layer} {label} (step {step})", "labels": labels}))
            jobs.append(("head_grid", step_dir / f"layer{layer}_heads.png", True,
                         {"probs": maps, "title": f"layer {layer} heads (step {step})", "labels": labels}))
        jobs.append(("layer_comparison", step_dir / "layer_comparison.png", True,
                     {"probs": first.mean(1), "title": f"layers, head-averaged (step {step})",
                      "layer_names": [f"layer {layer}" for layer in self.layers]}))
        self._draw(step, jobs)
