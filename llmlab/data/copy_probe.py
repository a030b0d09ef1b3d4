"""The copy probe: validation documents of the embedded language as token rows, with every place where a span
must be copied from earlier in the document, in token positions (what the circuits monitor measures).

Each row is one document as training sees it: after the end token of the document before it, and followed by
the next documents up to the row's length. By default only the code is probed where it is typed: it repeats
the code given earlier digit for digit, so a head that copies attends from the '#' before it to the code given,
and nothing else in the language predicts it. Names are left out: a sentence's subject is a coin flip between the two
characters, which no model can predict, and the recipient of "X gave the N to Y" is determined but asks for
"the other character", a choice made before any copying (kinds=("name",) probes those recipients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.data.synthetic import Copy
from llmlab.data.tokenizers import Tokenizer


@dataclass(frozen=True)
class CopyEvent:
    """One determined copy in a probe row, in token positions: the copy is tokens [start, end) and predicting it
    starts at start - 1; where it first stood is tokens [source_start, source_end)."""

    row: int
    start: int
    end: int
    source_start: int
    source_end: int


@dataclass
class CopyProbe:
    ids: torch.Tensor  # (rows, tokens)
    events: list[CopyEvent]


def token_ends(tokenizer: Tokenizer, text: str, ids: list[int]) -> list[int] | None:
    """The character offset where each token of `ids` (the encoding of text) ends, or None when decoding its
    prefixes does not spell the text (a tokenizer whose pieces do not map back to characters one by one)."""
    ends = [len(tokenizer.decode(ids[:k + 1])) for k in range(len(ids))]
    if not ends or ends[-1] != len(text) or any(b < a for a, b in zip(ends, ends[1:], strict=False)):
        return None
    return ends


def token_span(ends: list[int], start: int, end: int) -> tuple[int, int]:
    """The tokens [first, last + 1) that cover characters [start, end)."""
    first = next(k for k, e in enumerate(ends) if e > start)
    last = next(k for k, e in enumerate(ends) if e >= end)
    return first, last + 1


def copy_probe(annotated: list[tuple[str, list[Copy]]], tokenizer: Tokenizer, rows: int, tokens: int,
               kinds: tuple[str, ...] = ("code",)) -> CopyProbe | None:
    """Up to `rows` rows of `tokens` tokens, each starting at a document with a determined copy of one of `kinds`
    (code, name), from annotated documents (llmlab.data.sources.annotated_validation); None when none fits."""
    encoded = [tokenizer.encode(text) for text, _ in annotated]
    eos = tokenizer.eos_id
    row_ids, events = [], []
    for i, (text, copies) in enumerate(annotated):
        if len(row_ids) == rows:
            break
        determined = [c for c in copies if c.determined and c.kind in kinds]
        ends = token_ends(tokenizer, text, encoded[i]) if determined else None
        if ends is None:
            continue
        row = [eos, *encoded[i]]  # the document as training sees it: after the previous one's end token
        for following in encoded[i + 1:]:
            if len(row) >= tokens:
                break
            row += [eos, *following]
        if len(row) < tokens:
            break  # the validation text ran out
        found = [event_of(len(row_ids), c, ends) for c in determined]
        found = [e for e in found if e.end <= tokens]
        if not found:
            continue
        row_ids.append(row[:tokens])
        events += found
    if not row_ids:
        return None
    return CopyProbe(torch.tensor(row_ids), events)


def event_of(row: int, copy: Copy, ends: list[int]) -> CopyEvent:
    start, end = token_span(ends, copy.start, copy.end)
    source_start, source_end = token_span(ends, copy.source_start, copy.source_end)
    shift = 1  # the row starts with the previous document's end token
    return CopyEvent(row, start + shift, end + shift, source_start + shift, source_end + shift)
