"""What a run directory says about itself, for a reader: the config it trained with, its final metrics and the command
that trained it. The chat page shows it beside each model; the model card (llmlab.card) is written from it.

Nothing here raises on a file that is missing or unreadable: each becomes a line in `problems`, and the page or
card says what it could not read. The config is trusted only when it is the one the checkpoint recorded.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmlab.files import sha256_file
from llmlab.rundir import RunDir
from llmlab.rundir.summary import METRICS, read_summary


@dataclass
class RunInfo:
    root: Path  # the run directory
    checkpoint: Path  # the checkpoint described (its weights are the model)
    config: dict = field(default_factory=dict)  # config_resolved.yaml ({} when it cannot be trusted: see problems)
    summary: dict = field(default_factory=dict)  # metrics.json ({} before the run ended)
    overrides: list[str] | None = None  # .hydra/overrides.yaml (None: not started from the command line)
    multirun: bool = False  # a job of a multirun (its overrides reproduce this one job)
    problems: list[str] = field(default_factory=list)  # what could not be read, one line each

    @property
    def command(self) -> str | None:
        """The command that trained this run, quoted for a shell, or None when no record of it exists."""
        if self.overrides is None:
            return None
        return " ".join(["python -m llmlab.run", *map(shlex.quote, self.overrides)])

    def get(self, dotted: str, default=None):
        """A config value by its dotted key ("trainer.lr"), or default."""
        node = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    @property
    def stage(self) -> str:
        return str(self.get("stage.name", "?"))

    @property
    def base(self) -> str | None:
        """The model this run started from: stage.init_from, or model.path for an imported model."""
        return self.get("stage.init_from") or self.get("model.path") or None

    def config_summary(self) -> list[tuple[str, str]]:
        """(what, value) rows a reader needs to tell two runs apart."""
        if not self.config:
            return []
        g = self.get
        heads = f"{g('model.n_heads')} heads" + (f" ({g('model.n_kv_heads')} kv)" if g("model.n_kv_heads") else "")
        rows = [("stage", self.stage + (f" (from {self.base})" if self.base else "")),
                ("model", f"{g('model.name')}: {g('model.n_layers')} layers, d_model {g('model.d_model')}, {heads}, "
                          f"context {g('model.context_length')}"),
                ("architecture", f"{g('model.positions')} positions, {g('model.norm')}, {g('model.mlp')}"),
                ("tokenizer", str(g("tokenizer.kind"))),
                ("data", describe_data(g("data", {}))),
                ("training", f"{g('trainer.max_steps')} steps, batch {g('trainer.batch_size')}, "
                             f"lr {g('trainer.lr')}, {g('trainer.precision')}, seed {g('seed')}")]
        if g("model.lora.rank"):
            rows.append(("LoRA", f"rank {g('model.lora.rank')} on {', '.join(g('model.lora.targets', []))}"))
        if isinstance(self.summary.get("params"), int):
            rows.insert(2, ("parameters", f"{self.summary['params']:,}"))
        return rows

    def metrics(self) -> list[tuple[str, str, float]]:
        """(key, label, value) for each final figure metrics.json holds."""
        return [(m.key, m.label, float(self.summary[m.key])) for m in METRICS if is_number(self.summary.get(m.key))]


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def describe_data(data: dict) -> str:
    if not isinstance(data, dict):
        return "?"
    kind = data.get("kind", "?")
    if kind == "synthetic":
        return f"the embedded synthetic language ({data.get('train_docs')} training documents)"
    if kind == "induction":
        return (f"repeated spans of Zipfian random tokens ({data.get('train_docs')} training documents of "
                f"{data.get('length')} tokens)")
    if kind in ("tasks", "task_prefs"):
        return f"the embedded tasks ({kind}, {data.get('train_tasks')} training items)"
    paths = data.get("paths") or []
    return f"{kind}: {', '.join(map(str, paths))}" if paths else str(kind)


def read_run_info(checkpoint: Path, manifest: dict) -> RunInfo:
    """What the run holding this checkpoint says about itself; manifest: the checkpoint's (verified) manifest."""
    checkpoint = Path(checkpoint)
    run = RunDir.of_checkpoint(checkpoint)
    info = RunInfo(run.root, checkpoint)
    info.config = read_config(run.config, manifest.get("config_sha256"), checkpoint.name, info.problems)
    summary, why = read_summary(run.summary)
    info.summary = summary or {}
    if why:
        info.problems.append(why)
    overrides_file = run.hydra_overrides
    if overrides_file.is_file():
        try:
            lines = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
            if not isinstance(lines, list):
                raise ValueError("not a list")
            info.overrides = [str(line) for line in lines]
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
            info.problems.append(f".hydra/overrides.yaml is not readable ({type(err).__name__})")
        hydra_file = run.hydra_config
        try:
            info.multirun = yaml.safe_load(hydra_file.read_text(encoding="utf-8"))["hydra"]["mode"] == "MULTIRUN"
        except Exception:  # an older or partial record: a single run
            info.multirun = False
    return info


def read_config(path: Path, recorded: str | None, checkpoint: str, problems: list[str]) -> dict:
    """config_resolved.yaml as a dict, if it is the file the checkpoint recorded (a run resumed with
    allow_config_change rewrites it; its newest checkpoint records the new one)."""
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return {}
    if recorded and sha256_file(path) != recorded:
        problems.append(f"{path.name} is not the config {checkpoint} was trained under (changed since it was saved)")
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        problems.append(f"{path.name} is not readable ({type(err).__name__})")
        return {}
    if not isinstance(config, dict):
        problems.append(f"{path.name} is not a mapping")
        return {}
    return config
