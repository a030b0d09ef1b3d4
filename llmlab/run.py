"""The front door: `python -m llmlab.run [overrides]` composes a RunConfig and executes one Run.

Hydra composes and validates the config and picks the run directory; everything after that is
plain Python on dataclasses (llmlab.runner.Run), which tests build without Hydra.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.errors import ConfigError
from llmlab.rundir import RunDir
from llmlab.store import CONF_DIR, register_configs, to_dataclass

register_configs()
log = logging.getLogger("llmlab.run")  # not __name__: run as a script, this module is __main__


def resume_command(out_dir: str) -> str:
    """The command that continues this run, quoted for a shell (a directory or a value may hold spaces)."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return " ".join(["python -m llmlab.run", *map(shlex.quote, [*overrides, f"hydra.run.dir={out_dir}"])])


def checkpoint_size(out_dir: str) -> str:
    """How much room a checkpoint of this run takes, from the newest one written: what a full disk must free."""
    from llmlab.train.checkpoint import list_checkpoints, read_manifest

    written = list_checkpoints(RunDir(out_dir).checkpoints)
    if not written:
        return ""
    size = sum(f["bytes"] for f in read_manifest(written[-1].path)["files"].values())
    return f"a checkpoint takes {size / 2**20:.1f} MB; "


class JobFailed(CompactHydraException, RuntimeError):
    """Raised instead of exiting in a multirun, so Hydra records the job as failed and runs the others. Hydra raises
    the first failed job's again once every job has ended: compact, it ends the sweep with its message, not a
    traceback."""


def fail(code: int, message: str) -> None:
    log.error(f"error: {message}")
    if str(HydraConfig.get().mode).endswith("MULTIRUN"):
        raise JobFailed(f"error: a job of the multirun failed ({message}); the sweep report lists every job: "
                        f"{Path(HydraConfig.get().sweep.dir) / 'sweep_summary.md'}")
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    cfg.out_dir = HydraConfig.get().runtime.output_dir
    try:
        run_cfg = to_dataclass(cfg)
    except ConfigError as err:
        return fail(2, str(err))

    from llmlab.runner import Run  # imported late: torch loads only once the config is valid
    from llmlab.train.run_dir import AlreadyCompleted
    from llmlab.train.signals import SECOND_SIGNAL
    from llmlab.train.summary import run_report

    try:
        run = Run(run_cfg)  # under torchrun every rank takes rank 0's directory here
        cfg.out_dir = str(run.out_dir)
        run.overrides = list(HydraConfig.get().overrides.task)
        run.sweep_job = str(HydraConfig.get().mode).endswith("MULTIRUN")
        result = run.execute()
    except ConfigError as err:
        return fail(2, str(err))
    except AlreadyCompleted as done:  # the same command again: the finished run stays as it was
        log.info(f"{cfg.out_dir}: {done}; nothing to do (val/loss {done.summary.get('val_loss')})")
        return done.summary.get("val_loss")
    except OSError as err:  # the disk, not the code: a read-only or full run directory
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        in_run = Path(err.filename or cfg.out_dir).resolve().is_relative_to(Path(cfg.out_dir).resolve())
        kept = f" ({checkpoint_size(cfg.out_dir)}the last complete checkpoint is kept)" if in_run else ""
        return fail(1, f"{err.filename or cfg.out_dir}: {err.strerror}" + (
            f"; free some space{kept} and run the same command again" if full else ""))
    except KeyboardInterrupt as exc:  # stop now; checkpoints are atomic, so the last one is whole
        how = "a second signal" if str(exc) == SECOND_SIGNAL else "a signal"
        log.error(f"error: stopped at once by {how}, without a new checkpoint. Resume from the last one with:\n  "
                  f"{resume_command(cfg.out_dir)}")
        sys.exit(130)
    if not run.place.is_main:
        return result.val_loss
    log.info(f"outputs: {run.out_dir}")
    if result.status == "completed" and run.summary:
        log.info(run_report(run.summary, run.out_dir, run.stage.chat, run.pinned))
    if result.status == "interrupted":  # the user asked to stop: that ends a multirun too
        log.info(f"{result.message}. Resume with:\n  {resume_command(cfg.out_dir)}")
        sys.exit(130)
    if result.status == "failed":
        return fail(1, f"run failed: {result.message}")
    return result.val_loss


def quiet_other_ranks() -> None:
    """torchrun ranks other than 0 write nothing of their own: no .hydra/ record, no log file, no sweep report; they
    log errors alone (llmlab/console.py), so their loggers stay enabled.
    (Their clocks may resolve another timestamped directory; llmlab.runner.Run moves them into rank 0's.)"""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none",
                     "~hydra.callbacks.sweep_report"]


if __name__ == "__main__":
    quiet_other_ranks()
    quote_arguments()
    main()
