"""Monitors observe training and never steer it: attention, distributions, health.

Nothing is imported here on purpose: figure-rendering processes import llmlab.monitors.plots and
must not pay for torch.
"""
