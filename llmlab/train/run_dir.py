"""What a new run may do with an existing run directory: resume it, but never overwrite it by accident.

A run directory remembers the config that made it (config_resolved.yaml). A later run pointed at the
same directory resumes only if its config agrees on everything that shapes training; keys that only
say where or how visibly it runs (device, progress bar, monitors) may change freely.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from llmlab.config.errors import ConfigError, first_few
from llmlab.files import sha256_file

CONFIG_FILE = "config_resolved.yaml"
# keys that change where or how visibly a run executes, never which steps it takes
FREE_KEYS = ("out_dir", "device", "cache_dir", "tokenizer.cache_dir", "trainer.progress", "trainer.threads",
             "trainer.resume", "trainer.allow_config_change",
             "trainer.allow_data_change", "trainer.peak_flops", "trainer.compile",
             "trainer.activation_checkpointing", "monitors", "sweep")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in FREE_KEYS)


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved vs current' for every key both configs have that differs and is not free to change."""
    old, new = flatten(saved), flatten(current)
    return [f"{k}: {old[k]!r} there, {new[k]!r} now" for k in new
            if k in old and old[k] != new[k] and not is_free(k)]


def holds_a_run(out_dir: Path) -> str | None:
    """What in out_dir shows that a run already trained there, or None."""
    checkpoints = sorted((out_dir / "checkpoints").glob("step_*"))
    if checkpoints:
        return f"checkpoint {checkpoints[-1].name}"
    metrics = out_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        return "metrics.jsonl"
    return None


class RunDirLock:
    """An exclusive lock on a run directory for as long as one process trains in it: a second process (the same
    command twice, a resume while the first still trains, a scheduler's requeue) is refused with one line naming
    the holder. The kernel releases the lock when its holder dies, so a stale lock never blocks a resume."""

    FILE = ".lock"

    def __init__(self, out_dir: Path):
        self.path, self.fd = out_dir / self.FILE, None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{out_dir} is in use by another llmlab process (PID {holder}): wait for it to end, "
                              "or use another hydra.run.dir") from None
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    __del__ = release


class AlreadyCompleted(Exception):
    """The run directory holds a run that finished where this one would resume: nothing to do, nothing touched."""

    def __init__(self, summary: dict):
        super().__init__(f"already completed at step {summary['steps']}")
        self.summary = summary


def completed_summary(out_dir: Path, manifest: dict | None, max_steps: int) -> dict | None:
    """metrics.json of a run that finished at the checkpoint it would resume from, at max_steps or stopped early:
    nothing is left to do."""
    if manifest is None:
        return None
    try:
        summary = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    step = manifest["step"]
    done = isinstance(summary, dict) and summary.get("status") == "completed" and summary.get("steps") == step
    return summary if done and (step >= max_steps or summary.get("message")) else None


def check_run_dir(out_dir: Path, current: dict, resume: str, allow_config_change: bool,
                  manifest: dict | None = None) -> None:
    """ConfigError if this run would overwrite, or resume under another config, the run already in out_dir.

    manifest: the checkpoint this run resumes from; it records the checksum of the config file it ran under, so
    a config file edited or deleted since cannot let another config through."""
    if resume == "never":
        found = holds_a_run(out_dir)
        if found:
            raise ConfigError(f"{out_dir} already holds a run ({found}); trainer.resume=never would overwrite it: "
                              "use a new hydra.run.dir (or trainer.resume=auto to continue it)")
        return
    saved_file = out_dir / CONFIG_FILE
    if allow_config_change:
        return
    recorded = (manifest or {}).get("config_sha256")
    if not saved_file.is_file():
        if recorded:
            raise ConfigError(f"{saved_file} is missing, so this run cannot be checked against the config it was "
                              "trained with; restore it, or resume with trainer.allow_config_change=true")
        return
    if recorded and sha256_file(saved_file) != recorded:
        raise ConfigError(f"{saved_file} was changed after its checkpoint was written; restore it, or resume with "
                          "trainer.allow_config_change=true")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    except (OmegaConfBaseException, YAMLError, ValueError) as e:
        raise ConfigError(f"{saved_file} is not readable YAML ({type(e).__name__}); restore it, or resume with "
                          "trainer.allow_config_change=true") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_file} holds no config; restore it, or resume with trainer.allow_config_change=true")
    differing = config_differences(saved, current)
    if differing:
        shown = first_few(differing, 4, "; ")
        raise ConfigError(f"{out_dir} holds a run made with another config ({shown}); use a new hydra.run.dir, "
                          "or trainer.allow_config_change=true to resume it with the new values")
