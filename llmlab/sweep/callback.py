"""The Hydra callback that keeps a multirun's report current (registered in conf/config.yaml).

Hydra skips on_multirun_end when any job fails, so the report is also rebuilt after every job:
whatever happens to the sweep, its directory holds a report of every job that ended.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SweepReport(Callback):
    def __init__(self, plots: bool = True, generations: bool = True, prompts: list[str] | None = None,
                 max_new_tokens: int = 120, seed: int = 0, num_samples: int = 8, checkpoint: str = "latest"):
        self.plots = plots
        self.generations = ({"prompts": list(prompts or [""]), "max_new_tokens": max_new_tokens, "seed": seed,
                             "num_samples": num_samples, "checkpoint": checkpoint} if generations else None)

    def _rebuild(self, config: DictConfig) -> Path | None:
        from llmlab.sweep.report import write_sweep_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_sweep_report(sweep_dir, self.plots, self.generations,
                               reference=OmegaConf.select(config, "sweep.reference", default=None))
        except Exception as exc:  # a report must never turn a finished job into a failed one
            log.warning(f"sweep report not written ({type(exc).__name__}: {exc}); "
                        f"rebuild it with: python -m llmlab.sweep {sweep_dir}")
            return None
        return sweep_dir

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if str(config.hydra.mode).endswith("MULTIRUN"):
            self._rebuild(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = self._rebuild(config)
        if sweep_dir is not None:
            log.info(f"sweep report: {sweep_dir / 'sweep_summary.md'}")
