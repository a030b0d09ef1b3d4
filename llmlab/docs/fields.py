"""A dataclass's fields with their documentation: the string literal under each field (an attribute docstring),
read from the source with `ast`, so the text lives once, beside the field, and costs nothing at run time."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

REQUIRED = object()  # a field without a default: the user must give it


@dataclass(frozen=True)
class FieldDoc:
    name: str
    default: Any  # REQUIRED, or the value (a default_factory's product)
    doc: str  # "" when the field has no docstring
    node: type | None  # the field's dataclass type, when it is a nested node


def attribute_docstrings(cls: type) -> dict[str, str]:
    """{field name: its docstring} over cls and its bases (a subclass's own text wins), whitespace joined."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for item, after in zip(body, body[1:] + [None], strict=True):
            if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[item.target.id] = " ".join(after.value.value.split())
    return docs


def source_of(cls: type) -> str:
    """Where cls is defined, relative to the repository (for the messages that ask for a docstring)."""
    path = Path(inspect.getsourcefile(cls)).resolve()
    root = Path(__file__).resolve().parents[2]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def field_docs(cls: type) -> list[FieldDoc]:
    docs = attribute_docstrings(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = REQUIRED if f.default is MISSING or f.default == "???" else f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        node = type(default) if dataclasses.is_dataclass(default) else None
        out.append(FieldDoc(f.name, default, docs.get(f.name, ""), node))
    return out


def undocumented(cls: type, prefix: str) -> list[str]:
    """'<key> (<file>, class <name>)' for each field of cls without a docstring."""
    return [f"{prefix}{f.name} ({source_of(cls)}, class {cls.__name__})" for f in field_docs(cls) if not f.doc]


def show(value: Any) -> str:
    """A value as a user writes it on the command line or in YAML."""
    if value is REQUIRED or value == "???":
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value and (abs(value) >= 1e5 or abs(value) < 1e-3) else repr(value)
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)
