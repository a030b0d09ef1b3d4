"""Every relative link and image in README.md, CONTRIBUTING.md, docs/ and experiments/ resolves (its file, and its
heading when it names one), and every test a page cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_pages import ROOT, anchors, inline_code, pages, split_fences

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text())
    prose = re.sub(r"`[^`\n]+`", "", prose)  # a link inside inline code is an example, not a link
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def sources_by_module() -> dict[str, str]:
    return {p.stem: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}


CITED = re.compile(r"^(?:tests/)?(test_\w+?)(?:\.py)?(?:::(test_\w+?))?(?:_?\.\.\.)?$")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_tests_exist(page):
    files = sources_by_module()
    defined = {name for text in files.values() for name in re.findall(r"^\s*def (test_\w+)", text, re.M)}
    prose, code = split_fences(page.read_text())
    missing = []
    for span in inline_code(prose) + [w for line in code for w in line.split()]:
        for token in re.split(r"[\s,()]+", span):
            match = CITED.match(token.strip())
            if not match:
                continue
            module, function = match.groups()
            if function:  # test_file::test_function (a prefix when the page ends it with ...)
                body = files.get(module, "")
                if not re.search(rf"def {function}", body):
                    missing.append(token)
            elif module not in files and not any(d.startswith(module) for d in defined):
                missing.append(token)
    assert not missing, f"{page.relative_to(ROOT)} cites tests that do not exist: {', '.join(sorted(set(missing)))}"
