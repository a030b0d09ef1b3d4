"""The front door: `python -m llmlab.run [overrides]` composes a RunConfig and executes one Run.

Hydra composes and validates the config and picks the run directory; everything after that is
plain Python on dataclasses (llmlab.runner.Run), which tests build without Hydra.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llmlab.config.errors import ConfigError
from llmlab.store import CONF_DIR, register_configs, to_dataclass

register_configs()


def resume_command(out_dir: str) -> str:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return " ".join(["python -m llmlab.run", *overrides, f"hydra.run.dir={out_dir}"])


class JobFailed(RuntimeError):
    """Raised instead of exiting in a multirun, so Hydra records the job as failed and runs the others."""


def fail(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    if str(HydraConfig.get().mode).endswith("MULTIRUN"):
        raise JobFailed(message)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from llmlab.runner import Run  # imported late: torch loads only once the config is valid

    cfg.out_dir = HydraConfig.get().runtime.output_dir
    try:
        run = Run(to_dataclass(cfg))  # under torchrun every rank takes rank 0's directory here
        cfg.out_dir = str(run.out_dir)
        result = run.execute()
    except ConfigError as err:
        return fail(2, str(err))
    except KeyboardInterrupt:  # a second signal: stop now; checkpoints are atomic, so the last one is whole
        print(f"error: stopped at once by a second signal, without a new checkpoint. Resume from the last one "
              f"with:\n  {resume_command(cfg.out_dir)}", file=sys.stderr)
        sys.exit(130)
    if not run.place.is_main:
        return result.val_loss
    print(f"outputs: {run.out_dir}")
    if result.status == "interrupted":  # the user asked to stop: that ends a multirun too
        print(f"{result.message}. Resume with:\n  {resume_command(cfg.out_dir)}")
        sys.exit(130)
    if result.status == "failed":
        return fail(1, f"run failed: {result.message}")
    return result.val_loss


def quiet_other_ranks() -> None:
    """torchrun ranks other than 0 write nothing of their own: no .hydra/ record, no log file, no sweep report.
    (Their clocks may resolve another timestamped directory; llmlab.runner.Run moves them into rank 0's.)"""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                     "~hydra.callbacks.sweep_report"]


if __name__ == "__main__":
    quiet_other_ranks()
    main()
