"""What a new run may do with an existing run directory: resume it, but never overwrite it by accident.

A run directory remembers the config that made it (config_resolved.yaml). A later run pointed at the
same directory resumes only if its config agrees on everything that shapes training; keys that only
say where or how visibly it runs (device, progress bar, monitors) may change freely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llmlab.config.errors import ConfigError

CONFIG_FILE = "config_resolved.yaml"
# keys that change where or how visibly a run executes, never which steps it takes
FREE_KEYS = ("out_dir", "device", "cache_dir", "tokenizer.cache_dir", "trainer.progress", "trainer.threads",
             "trainer.resume", "trainer.allow_config_change", "trainer.peak_flops", "trainer.compile",
             "trainer.activation_checkpointing", "monitors")


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


def check_run_dir(out_dir: Path, current: dict, resume: str, allow_config_change: bool) -> None:
    """ConfigError if this run would overwrite, or resume under another config, the run already in out_dir."""
    if resume == "never":
        found = holds_a_run(out_dir)
        if found:
            raise ConfigError(f"{out_dir} already holds a run ({found}); trainer.resume=never would overwrite it: "
                              "use a new hydra.run.dir (or trainer.resume=auto to continue it)")
        return
    saved_file = out_dir / CONFIG_FILE
    if allow_config_change or not saved_file.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    differing = config_differences(saved, current)
    if differing:
        shown = "; ".join(differing[:4]) + (f"; and {len(differing) - 4} more" if len(differing) > 4 else "")
        raise ConfigError(f"{out_dir} holds a run made with another config ({shown}); use a new hydra.run.dir, "
                          "or trainer.allow_config_change=true to resume it with the new values")
