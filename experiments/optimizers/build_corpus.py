"""The real-text corpus of the optimizers study, built offline: the Python language reference that ships inside
Python itself (pydoc_data.topics, the pages help() shows: statements, operators, data model, ...), joined in
topic order. `python experiments/optimizers/build_corpus.py /tmp/pyref.txt` (Python 3.11.7: 465,048 characters)."""

import pydoc_data.topics
import sys
from pathlib import Path

text = "\n\n".join(pydoc_data.topics.topics[key].strip() for key in sorted(pydoc_data.topics.topics)) + "\n"
Path(sys.argv[1]).write_text(text, encoding="utf-8")
print(f"{sys.argv[1]}: {len(text):,} characters, {len(set(text))} distinct, Python {sys.version.split()[0]}")
