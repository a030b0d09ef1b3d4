"""Monitors observe training and never steer it: attention, distributions, health, circuits.

Nothing is imported here eagerly: figure-rendering processes import llmlab.monitors.plots and must not
pay for torch. `from llmlab.monitors import AttentionMonitor, CircuitsMonitor, DistributionMonitor` imports on demand.
"""

from __future__ import annotations


def __getattr__(name: str):
    """`from llmlab.monitors import AttentionMonitor, CircuitsMonitor, DistributionMonitor`, imported when asked."""
    if name == "AttentionMonitor":
        from llmlab.monitors.attention import AttentionMonitor

        return AttentionMonitor
    if name == "DistributionMonitor":
        from llmlab.monitors.distribution import DistributionMonitor

        return DistributionMonitor
    if name == "CircuitsMonitor":
        from llmlab.monitors.circuits import CircuitsMonitor

        return CircuitsMonitor
    raise AttributeError(f"module 'llmlab.monitors' has no attribute {name!r}")
