"""The runtime gate: every check of a run's config that needs the device, the processes or the built parts.

The schemas check what a config says on its own (llmlab.config); what only the machine or the built model can
answer is checked here, in one place, before the run writes its record, its logs or a checkpoint. Each check runs
as early as its inputs exist: before the stage builds anything, or right after. Every problem found at one point
is reported together, on one line.
"""

from __future__ import annotations

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import RunConfig
from llmlab.monitors.attention import select_layers
from llmlab.monitors.build import build_monitors
from llmlab.monitors.router import moe_layers
from llmlab.stages import Stage, StageParts
from llmlab.train.distributed import Distributed


def check(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def before_build(cfg: RunConfig, device: torch.device, place: Distributed, stage: Stage) -> None:
    """What the device and the processes rule out, before anything is built or loaded."""
    problems = []
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        problems.append(f"trainer.precision=fp16 needs CUDA and this run is on {device.type}; use fp32 or bf16")
    sharded = place.enabled and cfg.trainer.strategy == "fsdp"
    if sharded and build_monitors(cfg.monitors):
        problems.append("trainer.strategy=fsdp shards the weights, so no rank sees them whole for the monitors: "
                        "use monitors=none, or trainer.strategy=ddp")
    if sharded and stage.fsdp_problem:
        problems.append(stage.fsdp_problem)
    check(problems)


def after_build(cfg: RunConfig, parts: StageParts) -> None:
    """What the built parts rule out: the monitors' layers and probe batch against the model and its data (so a
    typo is a config error, not a disabled monitor)."""
    problems = []
    if build_monitors(cfg.monitors, moe=bool(moe_layers(parts.model))):
        for node in ("attention", "distribution"):
            try:
                select_layers(getattr(cfg.monitors, node).layers, parts.model.cfg.n_layers, f"monitors.{node}.layers")
            except ConfigError as err:
                problems.append(str(err))
        probe = cfg.monitors.probe
        if probe.batch_idx >= len(parts.val_batches):
            problems.append(f"monitors.probe.batch_idx={probe.batch_idx}: only {len(parts.val_batches)} validation "
                            "batches (trainer.eval_batches)")
    check(problems)
