"""Token streams on disk (memory-mapped) and the batches drawn from them.

Training batches are random windows drawn from a seeded torch.Generator whose state goes into every
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
Validation batches are fixed windows spread evenly over the validation stream: the same every eval.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from llmlab.config.errors import ConfigError
from llmlab.data.batch import Batch
from llmlab.data.tokenizers import Tokenizer
from llmlab.files import atomic_file


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """Each document's tokens followed by eos, concatenated."""
    eos = np.array([tokenizer.eos_id])
    parts = [p for d in docs for p in (tokenizer.encode_to_array(d), eos)]
    return np.concatenate(parts).astype(tokenizer.dtype) if parts else np.zeros(0, dtype=tokenizer.dtype)


def cached_token_stream(
    tokenizer: Tokenizer, tokenizer_key: str, docs: list[str], cache_dir: Path
) -> np.ndarray:
    """Encode once per (tokenizer, text) and keep the result as a read-only memory map."""
    digest = hashlib.sha256(tokenizer_key.encode())
    for doc in docs:
        digest.update(doc.encode())
        digest.update(b"\x00")
    dtype = tokenizer.dtype
    path = cache_dir / f"{digest.hexdigest()[:24]}.{np.dtype(dtype).name}.bin"
    if not path.exists():
        tokens = encode_documents(tokenizer, docs)
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:  # a crash mid-write never leaves a truncated stream under the real name
            tokens.tofile(tmp)
    return np.memmap(path, dtype=dtype, mode="r")


class TrainBatches:
    """Random (input, target) windows of seq_len tokens from one stream.

    Under data parallelism every rank draws the same global batch of batch_size x world_size windows from the
    same generator and keeps its own slice: ranks see distinct data, the data position is one shared state,
    and N ranks train on exactly what one process with an N times larger batch would.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(tokens) < batch_size * (seq_len + 1):
            raise ConfigError(
                f"trainer.batch_size={batch_size} x model.context_length={seq_len} needs at least "
                f"{batch_size * (seq_len + 1)} training tokens, the data has {len(tokens)}: "
                "use more data or smaller batch/context"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        starts = torch.randint(0, len(self.tokens) - self.seq_len, (self.batch_size * self.world_size,),
                               generator=self.generator)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return windows(self.tokens, mine.tolist(), self.seq_len)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> Batch:
    block = torch.from_numpy(np.stack([tokens[s:s + seq_len + 1].astype(np.int64) for s in starts]))
    return Batch(block[:, :-1], block[:, 1:])  # (B, T) inputs and next-token targets


def validation_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int
) -> list[Batch]:
    """n_batches fixed batches of windows spread evenly over the stream (they overlap if it is short)."""
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            f"model.context_length={seq_len} is longer than the validation data ({len(tokens)} tokens): "
            "use more validation data or a shorter context"
        )
    starts = np.linspace(0, len(tokens) - seq_len - 1, n_batches * batch_size).astype(np.int64).tolist()
    return [
        windows(tokens, starts[i * batch_size:(i + 1) * batch_size], seq_len) for i in range(n_batches)
    ]
