"""`python -m llmlab.docs [--check]`: write docs/reference/{config,config-groups,commands}.md from the code
(`--check`: write nothing; exit 1 naming each page that differs from a fresh generation, or each undocumented field)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    from llmlab.docs.reference import missing_docs, render

    missing = missing_docs()
    if missing:
        print("fields without a docstring (put a one-line string under each field):\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 1
    stale = []
    for name, text in render().items():
        path = REFERENCE / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run `python -m llmlab.docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("out of date: " if args.check else "written: ") + (", ".join(stale) or "nothing") if stale
          else "the reference pages are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
