"""Every schema registered in Hydra's ConfigStore in one place, where the YAML options in conf/ find them: the run's,
each data kind's, each registered stage's and each command's; and the composed config turned into validated
dataclasses. Importing this module registers them."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from llmlab.config import commands
from llmlab.config.errors import ConfigError, find_config_error
from llmlab.config.schema import (
    ChatDataConfig,
    HFDataConfig,
    InductionDataConfig,
    MixDataConfig,
    ModularDataConfig,
    RunConfig,
    SyntheticDataConfig,
    TasksDataConfig,
    TextDataConfig,
)
from llmlab.stages import all_stages
from llmlab.sweep.collect import NOT_SWEPT, declared_sweep

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def job_dirname(overrides, sweep_dir: str | None = None) -> str:
    """A multirun job's directory name: the swept keys and this job's values (`model.n_layers=2,seed=1`); the
    sweep's fixed overrides are in its report's header, not in every name. A value with characters a path should
    not hold (`/`, brackets, spaces) or a long one is shortened and given a hash of itself."""
    items = [(k.lstrip("+~"), v) for k, _, v in (str(o).partition("=") for o in overrides or [])]
    swept = declared_sweep(Path(sweep_dir)) if sweep_dir else None
    if swept is not None:
        items = sorted((kv for kv in items if kv[0] in swept), key=lambda kv: swept.index(kv[0]))
    else:  # no multirun.yaml to say what is swept: every override that says what the job studies
        items = [kv for kv in items if kv[0] not in NOT_SWEPT | {"experiment", "debug"}
                 and not kv[0].startswith("hydra.")]
    name = ",".join(f"{k.replace('/', '.')}={path_safe(v)}" for k, v in items) or "default"
    if len(name) > 180:
        name = f"{name[:160]}~{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def path_safe(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+\-@:%]", "_", value)
    if cleaned == value and len(value) <= 40:
        return value
    return f"{cleaned[:24]}~{hashlib.sha1(value.encode()).hexdigest()[:8]}"


def config_groups() -> str:
    """`--help`'s list of config groups, one line each with its options: the YAML files under conf/ a user picks
    from (the schemas registered as base_<name> in the same groups are no option)."""
    lines = []
    for group in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        name = group.relative_to(CONF_DIR).as_posix()
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options and name.split("/")[0] != "hydra":
            lines.append(f"{name}: {', '.join(options)}")
    return "\n".join(lines)


def register_configs() -> None:
    if not OmegaConf.has_resolver("llmlab.dirname"):
        OmegaConf.register_new_resolver("llmlab.dirname", job_dirname)
    if not OmegaConf.has_resolver("llmlab.config_groups"):
        OmegaConf.register_new_resolver("llmlab.config_groups", config_groups)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    # data options differ in their fields, so each data YAML names its own schema
    cs.store(group="data", name="base_synthetic", node=SyntheticDataConfig)
    cs.store(group="data", name="base_induction", node=InductionDataConfig)
    cs.store(group="data", name="base_text", node=TextDataConfig)
    cs.store(group="data", name="base_tasks", node=TasksDataConfig)
    cs.store(group="data", name="base_chat", node=ChatDataConfig)
    cs.store(group="data", name="base_hf", node=HFDataConfig)
    cs.store(group="data", name="base_mix", node=MixDataConfig)
    cs.store(group="data", name="base_modular", node=ModularDataConfig)
    # likewise each stage's YAML: conf/stage/<name>.yaml lists base_<name>
    for name, stage in all_stages().items():
        cs.store(group="stage", name=f"base_{name}", node=stage.config)
    for name, node in (("generate", commands.GenerateConfig), ("chat", commands.ChatConfig),
                       ("evaluate", commands.EvaluateConfig), ("sample_tasks", commands.SampleTasksConfig),
                       ("analyze", commands.AnalyzeConfig), ("export", commands.ExportConfig),
                       ("merge_lora", commands.MergeConfig)):
        cs.store(name=f"base_{name}", node=node)


register_configs()


def unknown_keys(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """(dotted key, the node's fields) for each key a schema node does not have: `+key=value` can add one,
    and OmegaConf.to_object would drop it without a word."""
    node_type = OmegaConf.get_type(cfg)
    fields = [f.name for f in dataclasses.fields(node_type)] if dataclasses.is_dataclass(node_type) else None
    for key in cfg.keys():
        if fields is not None and key not in fields:
            yield f"{prefix}{key}", fields
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from unknown_keys(child, f"{prefix}{key}.")


def to_dataclass(cfg: DictConfig):
    """Validated dataclasses from a composed config; a user's mistake becomes one ConfigError line."""
    for key, fields in unknown_keys(cfg):
        node, name = key.rpartition(".")[0], key.rpartition(".")[2]
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean {node + '.' if node else ''}{close[0]}?" if close else ""
        raise ConfigError(f"{key}: no such field{hint} ({node or 'the run'} has {', '.join(fields)})")
    try:
        return OmegaConf.to_object(cfg)
    except Exception as exc:
        found = find_config_error(exc)
        if found is not None:
            raise found from None
        raise ConfigError(str(exc).splitlines()[0]) from None


def compose_run_config(overrides: list[str], out_dir: str | Path):
    """The RunConfig the CLI would build from these overrides, without Hydra running the job (benchmarks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    cfg.out_dir = str(out_dir)
    return to_dataclass(cfg)
