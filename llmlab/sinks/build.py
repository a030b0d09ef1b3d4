"""The sinks of one run: the trainer's (metrics.jsonl, and a line per evaluation on the console) and the monitors'
(monitors.jsonl), sharing TensorBoard and, with logger=wandb, W&B.

The monitors keep a log of their own so that metrics.jsonl holds the same keys whichever monitors watch a run (the
sweep, the plots and the golden records compare it across runs), and stays small to read (a capture of the
distribution monitor alone is hundreds of scalars).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from llmlab.config.schema import RunConfig
from llmlab.rundir import RunDir
from llmlab.sinks.base import JsonlSink, MetricSinks, Sink
from llmlab.sinks.console import ConsoleSink


class RunSinks(MetricSinks):
    """The trainer's sinks; `monitors`: the monitors' fan-out, the same shared sinks with monitors.jsonl in place of
    metrics.jsonl. Flushing or closing the run's sinks does both logs."""

    def __init__(self, metrics: JsonlSink, monitor_log: JsonlSink, shared: list[Sink]):
        super().__init__([metrics, ConsoleSink(), *shared])
        self.monitor_log = monitor_log
        self.monitors = MetricSinks([monitor_log, *shared])

    def flush(self) -> None:
        super().flush()
        self.monitor_log.flush()

    def close(self) -> None:
        super().close()
        self.monitor_log.close()


def run_sinks(cfg: RunConfig, run_dir: RunDir, resume_step: int | None) -> RunSinks:
    """Rank 0's sinks; a resumed run's logs drop the rows past its checkpoint (resume_step)."""
    from llmlab.sinks.tensorboard import TensorBoardSink

    shared: list[Sink] = []
    if cfg.logger.wandb.enabled:  # first: a W&B that cannot start stops the run before any file is opened
        from llmlab.sinks.wandb import WandbSink

        config = OmegaConf.to_container(OmegaConf.structured(cfg))
        shared.append(WandbSink(cfg.logger.wandb, run_dir.root, run_dir.root.name, config))
    shared.insert(0, TensorBoardSink(run_dir.tensorboard, resume_step))
    return RunSinks(JsonlSink(run_dir.metrics_log, resume_step), JsonlSink(run_dir.monitors_log, resume_step),
                    shared)
