"""The documentation pages the docs tests read: README.md, CONTRIBUTING.md, docs/ and experiments/, with their
fenced code blocks and inline code told apart from prose."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    found += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "experiments").rglob("*.md"))
    return [p for p in found if p.exists()]


def split_fences(text: str) -> tuple[str, list[str]]:
    """(the prose with fenced blocks blanked out, the fenced blocks' lines)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        (code if fenced else prose).append(line)
        if fenced:
            prose.append("")
    return "\n".join(prose), code


def inline_code(prose: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose)


def slug(heading: str) -> str:
    """A heading's anchor as code hosts make it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for match in re.finditer(r"^#{1,6} (.+)$", prose, re.M):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out
