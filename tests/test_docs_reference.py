"""The generated reference pages (docs/reference/) are what the code generates now, and every field is documented."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import pytest

from llmlab.docs.fields import attribute_docstrings, field_docs, undocumented
from llmlab.docs.reference import missing_docs, render

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return render()


def test_every_schema_field_has_a_docstring():
    missing = missing_docs()
    assert not missing, ("fields without a docstring (put a one-line string under each field, then run "
                         "`python -m llmlab.docs`):\n  " + "\n  ".join(missing))


def test_the_committed_reference_is_a_fresh_generation(pages):
    stale = []
    for name, text in pages.items():
        committed = (REFERENCE / name).read_text() if (REFERENCE / name).exists() else ""
        if committed != text:
            diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), f"committed {name}",
                                        f"generated {name}", n=0, lineterm="")
            stale.append("\n".join(list(diff)[:20]))
    assert not stale, "docs/reference is out of date: run `python -m llmlab.docs` (make docs-reference)\n" + \
        "\n".join(stale)


def test_the_pages_reach_every_kind_of_node(pages):
    config = pages["config.md"]
    for key in ("seed", "model.lora.rank", "model.moe.experts", "data.train_docs", "data.sources[].weight",
                "stage.beta", "stage.rewards[]._target_", "trainer.muon.lr", "trainer.early_stopping.patience",
                "monitors.probe.tokens", "monitors.circuits.threshold", "sweep.reference"):
        assert f"| `{key}` |" in config, key
    assert "`stage=grpo`: `40`" in config  # a preset's value beside the schema's default
    commands = pages["commands.md"]
    for text in ("## `python -m llmlab.generate`", "| `use_cache` |", "| `stop_at_eos` |",
                 "## `python -m llmlab.sweep`", "--reference", "### `vs-transformers`"):
        assert text in commands, text
    assert "| `hf` |" in pages["config-groups.md"] and "| `mix` |" in pages["config-groups.md"]


@dataclasses.dataclass
class _Base:
    size: int = 3
    """how big"""
    name: str = "a"
    """the name"""


@dataclasses.dataclass
class _Child(_Base):
    name: str = "b"
    """the child's name"""
    items: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    bare: int = 0  # a comment is not a docstring


def test_docstrings_are_read_with_inheritance_and_a_missing_one_is_named():
    assert attribute_docstrings(_Child) == {"size": "how big", "name": "the child's name"}
    docs = {f.name: (f.default, f.doc) for f in field_docs(_Child)}
    assert docs == {"size": (3, "how big"), "name": ("b", "the child's name"), "items": ([1, 2], ""),
                    "bare": (0, "")}
    assert [s.split(" (")[0] for s in undocumented(_Child, "x.")] == ["x.items", "x.bare"]
