"""Weights & Biases: the run's scalars and final figures in a W&B run, online or offline (logger=wandb).

wandb is an optional dependency (`pip install 'llmlab[wandb]'`); without it, or when W&B cannot start, the run
stops before training with one line saying why. Figures and histograms stay in TensorBoard.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.config.schema import WandbConfig
from llmlab.sinks.base import Sink


class WandbSink(Sink):
    def __init__(self, cfg: WandbConfig, out_dir: Path, name: str, config: dict):
        try:
            wandb = importlib.import_module("wandb")
        except ImportError:
            raise ConfigError("logger=wandb: the wandb package is not installed; pip install 'llmlab[wandb]' "
                              "(or use logger=tensorboard)") from None
        mode = cfg.mode or os.environ.get("WANDB_MODE") or "online"
        directory = Path(cfg.dir) if cfg.dir else out_dir
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, dir=str(directory), name=name,
                                  config=config, reinit="create_new")
        except Exception as exc:  # no login, no network, a bad entity: one line, before anything trains
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"logger=wandb (mode {mode}): W&B did not start: {first}; set WANDB_MODE=offline "
                              "to log without a connection, or use logger=tensorboard") from None

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if scalars:
            self.run.log(dict(scalars), step=step)

    def log_summary(self, step: int, scalars: dict[str, float]) -> None:
        self.run.summary.update(dict(scalars))

    def close(self) -> None:
        self.run.finish()
