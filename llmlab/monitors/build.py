"""From the monitors config node to the list of monitors a run uses."""

from __future__ import annotations

from llmlab.config.monitors import MonitorsConfig
from llmlab.monitors.attention import AttentionMonitor
from llmlab.monitors.base import Monitor
from llmlab.monitors.distribution import DistributionMonitor
from llmlab.monitors.health import HealthMonitor


def build_monitors(cfg: MonitorsConfig) -> list[Monitor]:
    monitors: list[Monitor] = []
    if cfg.attention.enabled:
        monitors.append(AttentionMonitor(cfg.attention))
    if cfg.distribution.enabled:
        monitors.append(DistributionMonitor(cfg.distribution))
    if cfg.health.enabled:
        monitors.append(HealthMonitor(cfg.health))
    return monitors
