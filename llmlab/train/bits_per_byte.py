"""Bits per byte: a loss that compares across tokenizers.

A loss in nats per token depends on how much text a token holds: a character model and a BPE model of the same
text cannot be compared by it. Dividing the summed loss by the bytes of text the scored tokens decode to (and by
ln 2, for bits) gives a figure of the text itself: bpb = sum of nats / (ln 2 * UTF-8 bytes). For a tokenizer of one
token per ASCII character it is exactly loss / ln 2.

What counts as text is the stage's business (StageParts.text_bytes): end-of-text and chat markers decode to no
bytes, so their loss is charged to the text around them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from llmlab.data.batch import IGNORE, Batch

LN2 = math.log(2)
DECODE_CHUNK = 1 << 20  # tokens decoded at a time from a whole split (a sharded stream is never read whole)

TextBytes = Callable[[list[int]], int]  # ids -> UTF-8 bytes of the text they decode to


def utf8_bytes(decode: Callable[[list[int]], str]) -> TextBytes:
    return lambda ids: len(decode(ids).encode("utf-8"))


def bits_per_byte(nats: float, n_bytes: int) -> float | None:
    """A summed loss in nats over text of n_bytes bytes, in bits per byte; None when there is no text."""
    return nats / (LN2 * n_bytes) if n_bytes > 0 else None


def run_bytes(context: int, run: list[int], text_bytes: TextBytes) -> int:
    """Bytes a run of tokens adds to the text after the token before it. Decoded with that token, as the model read
    it: a tokenizer may drop a piece's leading space at the start of a text, and a character whose UTF-8 bytes
    are byte-fallback tokens decodes whole only with all of them (one split between the context token and the run
    is the one case miscounted, by at most 3 bytes)."""
    return text_bytes([context, *run]) - text_bytes([context])


def scored_bytes(batch: Batch, text_bytes: TextBytes) -> int:
    """Bytes of the text a batch's scored targets (all but IGNORE) decode to. Each run of consecutive scored targets
    in a row is counted on its own: an SFT row scores several replies, with the prompts between them unscored."""
    total = 0
    for inputs, targets in zip(batch.input_ids.tolist(), batch.targets.tolist(), strict=True):
        start = None
        for j, token in enumerate([*targets, IGNORE]):
            if token != IGNORE and start is None:
                start = j
            elif token == IGNORE and start is not None:
                total += run_bytes(inputs[start], targets[start:j], text_bytes)
                start = None
    return total


def split_bytes(streams: Sequence[np.ndarray], text_bytes: TextBytes) -> int:
    """Bytes of the text a whole split's targets decode to: every token of a stream but its first
    (llmlab.train.split_eval scores exactly those), decoded a chunk at a time after the token before it."""
    total = 0
    for stream in streams:
        for start in range(1, len(stream), DECODE_CHUNK):
            ids = np.asarray(stream[start - 1:start + DECODE_CHUNK], dtype=np.int64).tolist()
            total += run_bytes(ids[0], ids[1:], text_bytes)
    return total
