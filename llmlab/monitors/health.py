"""HealthMonitor: says when training goes wrong, once, in the console, TensorBoard and alerts.jsonl.

- non-finite loss or gradients: the step and the first module (in forward order) whose gradient is
  not finite; what happens next is the trainer's policy (`trainer.on_nonfinite`);
- spikes: loss or gradient norm more than `z_threshold` standard deviations above a moving window (a loss that
  takes negative values, as GRPO's policy-gradient surrogate, is not watched for spikes: its gradient norm is);
- attention entropy collapse: a layer's mean attention entropy falling below `entropy_collapse` nats;
- dead MLP units: units whose activation never reaches 1% of the layer's typical peak on the probe;
- policy entropy collapse: a logged `*/entropy` metric (the entropy of a policy over the tokens it sampled, as
  GRPO's grpo/entropy) below `policy_entropy_collapse` nats: the policy has stopped exploring, so a group's
  samples agree and teach nothing.
- mixture of experts: a dead expert (under 1% of its fair share of the last training forward's assignments for
  `dead_expert_captures` captures running) and router collapse (a layer's load effectively on fewer than
  `router_collapse` x E experts: exp of the entropy of the load shares).
"""

from __future__ import annotations

import math
from collections import deque

import torch

from llmlab.config.monitors import HealthMonitorConfig
from llmlab.monitors.attention import attention_stats
from llmlab.monitors.base import Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history
from llmlab.monitors.router import moe_layers, router_stats

DEAD_RELATIVE = 0.01  # a unit is dead if its peak |activation| stays below 1% of the layer's mean peak


class HealthMonitor(Monitor):
    name = "health"

    def __init__(self, cfg: HealthMonitorConfig):
        super().__init__(Schedule(cfg.every))
        self.cfg = cfg
        self.history = {"loss": deque(maxlen=cfg.window), "grad_norm": deque(maxlen=cfg.window)}
        self.signed_loss = False

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        self.probe = ctx.probe
        self.dir = self.output_dir(ctx)
        truncate_history(self.dir / "history.jsonl", ctx.resume_step)
        self.moe = moe_layers(ctx.model)
        self.starved: dict[tuple[int, int], int] = {}  # (layer, expert) -> captures running under 1% of fair

    def on_nonfinite(self, info: StepInfo) -> None:
        culprit = first_nonfinite_gradient(self.ctx.model)
        where = f"; first non-finite gradient in {culprit}" if culprit else ""
        self.ctx.alerts.alert(info.step, "nonfinite", culprit or "loss",
                              f"non-finite loss ({info.loss}) or gradient norm ({info.grad_norm}) at step "
                              f"{info.step}{where}", loss=repr(info.loss), grad_norm=repr(info.grad_norm))

    def on_step_end(self, info: StepInfo) -> None:
        if info.finite:
            for key, value in (("loss", info.loss), ("grad_norm", info.grad_norm)):
                # a signed loss (a policy gradient's surrogate, near zero by construction) has no spikes to speak
                # of: its z-score over a window of values near zero is noise, so only cross-entropy-like losses
                # (never negative) are watched: once a loss below 0 was seen, the loss is not
                self.signed_loss = self.signed_loss or (key == "loss" and value < 0)
                z = None if key == "loss" and self.signed_loss else self._zscore(self.history[key], value)
                if z is not None and z > self.cfg.z_threshold:
                    self.ctx.alerts.alert(info.step, "spike", key,
                                          f"{key} spike at step {info.step}: {value:.4g} is {z:.1f} standard "
                                          f"deviations above the last {len(self.history[key])} steps", z=z)
                self.history[key].append(value)
        if self.probe is not None and self.schedule.due(info.step):
            self._probe(info.step)
        if self.moe and self.schedule.due(info.step):
            self._routing(info.step)

    def _routing(self, step: int) -> None:
        stats = [(layer, router_stats(moe)) for layer, moe in self.moe]
        stats = [(layer, s) for layer, s in stats if s is not None]
        if not stats:
            return
        for (layer, _), row in zip(stats, torch.stack([s for _, s in stats]).cpu().tolist(), strict=True):
            n_experts = len(row) - 6  # the shares, then router_stats' six layer statistics
            share = row[:n_experts]
            for expert, s in enumerate(share):
                key = (layer, expert)
                self.starved[key] = self.starved.get(key, 0) + 1 if s < DEAD_RELATIVE / n_experts else 0
                if self.starved[key] == self.cfg.dead_expert_captures:
                    self.ctx.alerts.alert(step, "dead_expert", f"layer{layer}.expert{expert}",
                                          f"expert {expert} of layer {layer} got {s:.2%} of the assignments (fair "
                                          f"share {1 / n_experts:.0%}) for {self.starved[key]} captures running, "
                                          f"at step {step}", share=s)
            effective = math.exp(-sum(s * math.log(s) for s in share if s > 0))
            if effective < self.cfg.router_collapse * n_experts:
                self.ctx.alerts.alert(step, "router_collapse", f"layer{layer}",
                                      f"router collapse in layer {layer} at step {step}: its load is effectively "
                                      f"on {effective:.1f} of {n_experts} experts", effective_experts=effective)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key.endswith("/entropy") and value < self.cfg.policy_entropy_collapse:
                self.ctx.alerts.alert(step, "policy_entropy_collapse", key,
                                      f"policy entropy collapse at step {step}: {key} {value:.3g} nats per token",
                                      entropy=value)

    def _zscore(self, window: deque, value: float) -> float | None:
        if len(window) < max(10, window.maxlen // 2):
            return None
        mean = sum(window) / len(window)
        std = math.sqrt(sum((v - mean) ** 2 for v in window) / len(window))
        return (value - mean) / max(std, 1e-12 * max(abs(mean), 1.0))

    def _probe(self, step: int) -> None:
        probe = self.ctx.probe_forward(step)
        entropy = torch.stack([attention_stats(p)[:, 0].mean() for p in probe.attention])
        peaks = [peak for peak in probe.mlp_peaks if peak is not None]
        fractions = torch.stack([(peak < DEAD_RELATIVE * peak.mean()).float().mean() for peak in peaks]
                                ) if peaks else torch.zeros(0)
        entropy, found = entropy.cpu().tolist(), iter(fractions.cpu().tolist())
        dead = [None if peak is None else next(found) for peak in probe.mlp_peaks]
        record = {"step": step, "attention_entropy": entropy, "dead_mlp_fraction": dead}
        self.submit(lambda: append_history(self.dir / "history.jsonl", record))  # per layer, for the sweep report
        if self.ctx.sinks is not None:  # a layer without a fraction: a mixture of experts, whose routing is watched
            self.ctx.sinks.log_scalars(step, {f"health/layer{layer}/dead_mlp_fraction": float(d)
                                              for layer, d in enumerate(dead) if d is not None})
        for layer, (e, d) in enumerate(zip(entropy, dead, strict=True)):
            if e < self.cfg.entropy_collapse:
                self.ctx.alerts.alert(step, "entropy_collapse", f"layer{layer}",
                                      f"attention entropy collapse in layer {layer} at step {step}: "
                                      f"mean entropy {e:.3g} nats", entropy=e)
            if d is not None and d > self.cfg.dead_fraction:
                self.ctx.alerts.alert(step, "dead_units", f"layer{layer}",
                                      f"{d:.0%} of layer {layer}'s MLP units are dead on the probe at step {step}",
                                      fraction=d)


def first_nonfinite_gradient(model: torch.nn.Module) -> str | None:
    """The first parameter, in registration (roughly forward) order, with a non-finite gradient."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None
