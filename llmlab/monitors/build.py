"""From the monitors config node to the monitors a run uses, wired to the run's model, sinks and probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from llmlab.config.monitors import MonitorsConfig
from llmlab.data.copy_probe import CopyProbe
from llmlab.data.modular import ModularTask
from llmlab.monitors.attention import AttentionMonitor
from llmlab.monitors.base import AlertLog, Monitor, MonitorContext, MonitorSet, input_ids
from llmlab.monitors.circuits import CircuitsMonitor
from llmlab.monitors.distribution import DistributionMonitor
from llmlab.monitors.health import HealthMonitor
from llmlab.monitors.pool import FigurePool
from llmlab.monitors.progress import ProgressMonitor
from llmlab.monitors.router import RouterMonitor, moe_layers
from llmlab.monitors.worker import BackgroundWorker
from llmlab.rundir import RunDir
from llmlab.sinks import Sink

# (rows, tokens) -> the copy probe of the run's data, or None where its data has none
CopyProbeSource = Callable[[int, int], CopyProbe | None]


def build_monitors(cfg: MonitorsConfig, copy_probe: CopyProbeSource | None = None, moe: bool = False,
                   modular_task: ModularTask | None = None) -> list[Monitor]:
    """copy_probe: where the circuits monitor gets its copy probe; moe: the model has mixture-of-experts layers
    (the router monitor watches nothing in a dense one); modular_task: the run's modular arithmetic (data=modular),
    whose Fourier and restricted/excluded measures the progress monitor takes."""
    monitors: list[Monitor] = []
    if cfg.attention.enabled:
        monitors.append(AttentionMonitor(cfg.attention, probe=cfg.probe))
    if cfg.distribution.enabled:
        monitors.append(DistributionMonitor(cfg.distribution))
    if cfg.health.enabled:
        monitors.append(HealthMonitor(cfg.health))
    if cfg.circuits.enabled:
        circuits = cfg.circuits
        probe = copy_probe(circuits.copy_rows, circuits.tokens) if copy_probe is not None else None
        monitors.append(CircuitsMonitor(circuits, copy_probe=probe))
    if cfg.router.enabled and moe:
        monitors.append(RouterMonitor(cfg.router))
    if cfg.progress.enabled:
        monitors.append(ProgressMonitor(cfg.progress, modular_task))
    return monitors


@dataclass
class MonitorSource:
    """What a run's monitors are built from: its model and validation data, where they write and log."""

    model: nn.Module
    val_batches: Sequence  # the fixed probe is cut from one of them (monitors.probe)
    run_dir: Path
    sinks: Sink | None
    decode: Callable[[list[int]], str]  # ids to text, for token labels
    device: torch.device
    steps_per_epoch: float
    resume_step: int | None
    copy_probe: CopyProbeSource | None = None
    modular_task: ModularTask | None = None


def monitor_set(cfg: MonitorsConfig, source: MonitorSource) -> MonitorSet:
    """The run's monitors, their worker and figure pool, and the fixed probe cut from one validation batch (its
    layers and batch were checked by the runtime gate, llmlab.run_checks)."""
    model = source.model
    monitors = build_monitors(cfg, source.copy_probe, moe=bool(moe_layers(model)), modular_task=source.modular_task)
    if not monitors:
        return MonitorSet([])
    probe = cfg.probe
    ids = input_ids(source.val_batches[probe.batch_idx])[: probe.sequences, : probe.tokens]
    run_dir, sinks, decode = RunDir(source.run_dir), source.sinks, source.decode
    ctx = MonitorContext(
        model=model, out_dir=run_dir.monitors, sinks=sinks,
        worker=BackgroundWorker(cfg.max_workers, cfg.max_pending),
        alerts=AlertLog(run_dir.alerts, sinks),
        figures=FigurePool(cfg.max_workers),
        probe=ids.to(source.device),
        decode_token=lambda t: decode([t]),
        steps_per_epoch=source.steps_per_epoch, resume_step=source.resume_step,
    )
    return MonitorSet(monitors, ctx)
