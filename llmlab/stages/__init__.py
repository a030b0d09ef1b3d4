"""The stages a run can train, found by name: every module of this package registers the stages it defines."""

from __future__ import annotations

import importlib
import pkgutil

from llmlab.config.errors import ConfigError
from llmlab.stages.base import REGISTRY, Stage, StageContext, StageParts

__all__ = ["Stage", "StageContext", "StageParts", "all_stages", "get_stage", "is_chat_checkpoint"]


def all_stages() -> dict[str, type[Stage]]:
    """Every registered stage by name (importing this package's modules registers them)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(REGISTRY)


def get_stage(name: str) -> type[Stage]:
    stages = all_stages()
    if name not in stages:
        raise ConfigError(f"stage.name: expected one of {'|'.join(stages)}, got {name!r}")
    return stages[name]


def is_chat_checkpoint(manifest: dict) -> bool:
    """Whether a checkpoint's model answers in the chat template (older manifests say only their stage's name)."""
    if "chat" in manifest:
        return bool(manifest["chat"])
    stage = all_stages().get(manifest.get("stage", ""))
    return stage is not None and stage.chat
