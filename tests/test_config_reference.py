"""The README's configuration reference names every field a run's config has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from llmlab.config import monitors, schema
from llmlab.stages import all_stages

README = Path(__file__).resolve().parents[1] / "README.md"
DATA = (schema.SyntheticDataConfig, schema.TextDataConfig, schema.TasksDataConfig, schema.ChatDataConfig,
        schema.HFDataConfig, schema.MixDataConfig)


def keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of cls's fields and, for a nested dataclass node, of its node and its fields."""
    out = set()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name == "data" and cls is schema.RunConfig:
            nested = DATA
        elif f.name == "stage" and cls is schema.RunConfig:
            nested = tuple(stage.config for stage in all_stages().values())
        elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            nested = (type(f.default_factory()),)
        else:
            out.add(key)
            continue
        out.add(key)
        for sub in nested:
            out |= keys(sub, f"{key}.")
    return out


def reference_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Configuration reference\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Configuration reference' section followed by another section"
    return match.group(1)


def test_reference_lists_every_field():
    section = reference_section()
    fields = keys(schema.RunConfig)
    # the walk itself reaches every kind of node: run-level, nested, data kinds, stages, monitors
    assert {"seed", "model.lora.rank", "data.train_docs", "data.paths", "stage.beta",
            "trainer.early_stopping.patience"} <= fields
    assert {f"monitors.probe.{f.name}" for f in dataclasses.fields(monitors.ProbeConfig)} <= fields
    missing = sorted(k for k in fields if f"`{k}`" not in section)
    assert not missing, f"README.md's configuration reference lacks {len(missing)} field(s): {', '.join(missing)}"
