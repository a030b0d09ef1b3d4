"""Encoded chat samples in flat arrays on disk, read when a batch asks for them.

A conversation file is read a record at a time (llmlab/data/chat.py), each record encoded with the chat template
and appended to two temporary files: token ids (uint32) and loss mask (uint8). Memory then holds the record being
encoded and a few numbers per sample (where its sequences start, its length), never the file's text or its tokens
as Python objects, which took about 12 times the file's size. The files are anonymous (unlinked as soon as they are
made), so nothing is left on disk when the process ends, however it ends.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from llmlab.data.chat_template import Encoded

WRITE_BUFFER = 1 << 16  # tokens gathered before a write


class EncodedStore:
    """Items of `members` encoded sequences each (1: a conversation; 2: chosen and rejected), appended in order."""

    def __init__(self, members: int, directory: Path | None = None):
        self.members = members
        self._files = [tempfile.TemporaryFile(dir=directory) for _ in range(2)]  # ids, mask
        self._pending: tuple[list[int], list[bool]] = ([], [])
        self.starts = array("q", [0])  # sequence j is [starts[j], starts[j + 1])
        self.targets = array("q")  # loss-masked tokens of sequence j
        self.ids: np.ndarray | None = None
        self.mask: np.ndarray | None = None

    def append(self, item: Iterable[Encoded]) -> None:
        for encoded in item:
            self._pending[0].extend(encoded.ids)
            self._pending[1].extend(encoded.loss_mask)
            self.starts.append(self.starts[-1] + len(encoded.ids))
            self.targets.append(sum(encoded.loss_mask))
        if len(self._pending[0]) >= WRITE_BUFFER:
            self._flush()

    def _flush(self) -> None:
        ids, mask = self._pending
        self._files[0].write(np.asarray(ids, dtype=np.uint32).tobytes())
        self._files[1].write(np.asarray(mask, dtype=np.uint8).tobytes())
        self._pending = ([], [])

    def finish(self) -> EncodedStore:
        """Written: map the files for reading."""
        self._flush()
        for file in self._files:
            file.flush()
        if self.starts[-1]:
            self.ids = np.memmap(self._files[0], dtype=np.uint32, mode="r")
            self.mask = np.memmap(self._files[1], dtype=np.uint8, mode="r")
        return self

    def __len__(self) -> int:
        return (len(self.starts) - 1) // self.members

    def sequence(self, j: int) -> Encoded:
        a, b = self.starts[j], self.starts[j + 1]
        return Encoded(self.ids[a:b].tolist(), self.mask[a:b].astype(bool).tolist())

    def item(self, i: int) -> tuple[Encoded, ...]:
        return tuple(self.sequence(i * self.members + k) for k in range(self.members))

    def view(self, start: int, stop: int) -> StoreView:
        return StoreView(self, start, stop)


class StoreView:
    """Items [start, stop) of a store, as ChatBatches and fixed_batches take a list of items: len(), [i], [a:b],
    and each item's length (its longest sequence) without reading it."""

    def __init__(self, store: EncodedStore, start: int, stop: int):
        self.store, self.start, self.stop = store, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self.store.item(self.start + i) for i in range(*key.indices(len(self)))]
        if not -len(self) <= key < len(self):
            raise IndexError(key)
        return self.store.item(self.start + key % len(self))

    def _sequences(self) -> slice:
        m = self.store.members
        return slice(self.start * m, self.stop * m)

    def sequence_lengths(self) -> np.ndarray:
        starts = np.frombuffer(self.store.starts, dtype=np.int64)
        return np.diff(starts[self._sequences().start:self._sequences().stop + 1])

    @property
    def lengths(self) -> np.ndarray:
        """Each item's longest sequence, in tokens."""
        return self.sequence_lengths().reshape(len(self), self.store.members).max(axis=1)

    def target_tokens(self) -> int:
        return int(np.frombuffer(self.store.targets, dtype=np.int64)[self._sequences()].sum())
