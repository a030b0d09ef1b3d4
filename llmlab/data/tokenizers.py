"""Tokenizers: text <-> token ids, trained once per (config, text) and cached on disk.

Four kinds share one small interface: ``char`` (the training text's characters), ``byte`` (UTF-8 bytes,
nothing to learn) and ``bpe`` / ``unigram`` (sentencepiece). Every kind round-trips its text exactly:
sentencepiece runs with byte fallback and no normalisation, so no text is ever lost to ``<unk>``.
Each has an end-of-document id (``eos_id``) that ``encode`` never emits; the data pipeline puts it
between documents and generation stops on it.

A saved tokenizer is a directory: ``tokenizer.json`` (kind and what is needed to rebuild it) plus
``tokenizer.model`` for sentencepiece. ``build_tokenizer`` keys that directory by a hash of the config
and the training text, so a second run with the same data loads it instead of training again.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sentencepiece as spm

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TokenizerConfig
from llmlab.files import publishing, sha256_file

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    TokenIds = Sequence[int] | np.ndarray | torch.Tensor

FORMAT_VERSION = "llmlab-tokenizer-1"  # part of the cache key: bump it when training or files change
MANIFEST = "tokenizer.json"
SP_MODEL = "tokenizer.model"


class Tokenizer(ABC):
    kind: str
    eos_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; never adds eos."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def _save_files(self, directory: Path) -> dict[str, Any]:
        """Write this kind's own files; return the extra manifest fields ``_from_saved`` needs."""

    @classmethod
    @abstractmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> Tokenizer: ...

    @property
    def bos_id(self) -> int:
        """The id a document starts with: eos, the separator the data pipeline puts between documents."""
        return self.eos_id

    @property
    def dtype(self) -> type[np.integer]:
        return np.uint16 if self.vocab_size <= 1 << 16 else np.int32

    def encode_to_array(self, text: str) -> np.ndarray:
        """``encode`` as an array of ``dtype``; kinds override it to be fast on megabytes of text."""
        return np.asarray(self.encode(text), dtype=self.dtype)

    def decode(self, ids: TokenIds) -> str:
        """Text of a list or 1-D numpy/torch array of ids; eos ids are dropped."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self._decode([i for i in ids if i != self.eos_id])

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT_VERSION, "kind": self.kind, "vocab_size": self.vocab_size,
                    "eos_id": self.eos_id, **self._save_files(directory)}
        manifest["checksums"] = checksums(directory, manifest)
        # Written last: a directory with a manifest is complete.
        text = json.dumps(manifest, ensure_ascii=False, indent=1)
        (directory / MANIFEST).write_text(text + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text (sorted by code point), after eos and unk."""

    kind = "char"
    eos_id = 0
    unk_id = 1  # characters not in the training text; decodes to U+FFFD

    def __init__(self, chars: str) -> None:
        self.chars = "".join(sorted(set(chars)))
        # A sentinel above every code point keeps searchsorted's answer a valid index.
        self._codes = np.append(np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32), 2**32 - 1)
        self._table = ["", "\ufffd", *self.chars]

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> list[int]:
        return self.encode_to_array(text).tolist()

    def encode_to_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        rank = np.searchsorted(self._codes, codes)
        known = self._codes[rank] == codes
        return np.where(known, rank + 2, self.unk_id).astype(self.dtype)

    def _decode(self, ids: list[int]) -> str:
        return "".join([self._table[i] for i in ids])

    def _save_files(self, directory: Path) -> dict[str, Any]:
        return {"chars": self.chars}

    @classmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> CharTokenizer:
        return cls(manifest["chars"])


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are UTF-8 bytes, 256 is eos: any text, nothing to learn."""

    kind = "byte"
    eos_id = 256

    @property
    def vocab_size(self) -> int:
        return 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_to_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(self.dtype)

    def _decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")  # a cut multi-byte char becomes U+FFFD

    def _save_files(self, directory: Path) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> ByteTokenizer:
        return cls()


# sentencepiece writes a space as U+2581; a literal one in the text would come back as a space, so it is
# encoded as its UTF-8 byte pieces instead. Newlines are cut out too and get their own piece: lines are
# encoded independently, which makes a line's ids independent of the text before it (unigram's Viterbi
# otherwise drifts with the float rounding of long prefixes) and lets long texts go as one threaded batch.
_META_SPACE = "\u2581"
_SEPARATORS = re.compile("(\n|\u2581)")
_N_SPECIAL = 3 + 256  # unk, eos, newline + the byte-fallback pieces
_TRAIN_CHARS = 10_000_000  # larger texts are thinned evenly to about this much: training stays seconds
_BATCH_CHARS = 1 << 16  # from this length on, lines go to sentencepiece as one threaded batch
_LINE_CHARS = 1024  # at most 4 KiB of UTF-8, under sentencepiece's max_sentence_length (4192 bytes)
_SP_OPTIONS: dict[str, Any] = dict(
    byte_fallback=True,  # unseen characters become byte pieces, never <unk>
    character_coverage=0.9995,  # the rarest characters are left to byte pieces instead of costing vocab
    normalization_rule_name="identity",  # no NFKC: decode must give back the exact text
    add_dummy_prefix=False,  # no space invented before the text ...
    remove_extra_whitespaces=False,  # ... nor leading, trailing or repeated spaces dropped
    allow_whitespace_only_pieces=True,  # a run of spaces (indentation) may be one piece
    user_defined_symbols=["\n"],
    unk_id=0,
    eos_id=1,
    bos_id=-1,
    pad_id=-1,
    num_threads=8,  # fixed, not the core count: unigram's EM sums (so its pieces) depend on it
    minloglevel=2,  # errors only
)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece BPE or unigram model with byte fallback; see ``_SP_OPTIONS``."""

    def __init__(self, model: bytes, kind: str) -> None:
        if kind not in ("bpe", "unigram"):
            raise ValueError(f"SentencePieceTokenizer: kind must be bpe or unigram, got {kind!r}")
        self.kind = kind
        self.model_proto = model
        self._sp = spm.SentencePieceProcessor(model_proto=model)
        self.eos_id = self._sp.eos_id()
        self._separator_ids = {
            "\n": [self._sp.piece_to_id("\n")],
            _META_SPACE: [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()],
        }

    @classmethod
    def train(cls, text: str, kind: str, vocab_size: int) -> SentencePieceTokenizer:
        if vocab_size <= _N_SPECIAL:
            raise ConfigError(
                f"tokenizer.vocab_size={vocab_size} is too small for kind={kind}: it must be at least "
                f"{_N_SPECIAL + 1} (256 byte-fallback pieces, unk, eos and newline, then learnt pieces)"
            )
        lines = list(_training_lines(text))
        if not any(lines):
            raise ConfigError(f"tokenizer: kind={kind} needs training text, but the text is empty")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, model_type=kind,
                                           vocab_size=vocab_size, **_SP_OPTIONS)
        except RuntimeError as e:
            error = _vocab_size_error(str(e), kind, vocab_size)
            if error is None:
                raise
            raise error from None
        return cls(model.getvalue(), kind)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(itertools.chain.from_iterable(self._encode_parts(text)))

    def encode_to_array(self, text: str) -> np.ndarray:
        parts = self._encode_parts(text)
        count = sum(map(len, parts))
        return np.fromiter(itertools.chain.from_iterable(parts), dtype=self.dtype, count=count)

    def _encode_parts(self, text: str) -> list[list[int]]:
        """Ids of the text between separators, interleaved with the separators' fixed ids."""
        parts = _SEPARATORS.split(text)  # [text, sep, text, ..., sep, text]
        ids: list[list[int]] = [[]] * len(parts)
        if len(text) < _BATCH_CHARS:  # a batch call costs ~0.1 ms of thread setup: not worth it here
            ids[0::2] = [self._sp.encode(part) for part in parts[0::2]]
        else:
            ids[0::2] = self._sp.encode(parts[0::2])
        ids[1::2] = [self._separator_ids[sep] for sep in parts[1::2]]
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        (directory / SP_MODEL).write_bytes(self.model_proto)
        return {"model": SP_MODEL}

    @classmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> SentencePieceTokenizer:
        return cls((directory / manifest["model"]).read_bytes(), manifest["kind"])


def _training_lines(text: str) -> Iterator[str]:
    """Lines without their newline (a symbol of its own), cut to sentencepiece's sentence limit and, for
    a very large text, an evenly spaced deterministic subset (sentencepiece's own sampling is random)."""
    pieces = (line[i : i + _LINE_CHARS] for line in text.split("\n") for i in range(0, len(line), _LINE_CHARS))
    return itertools.islice(pieces, 0, None, max(1, math.ceil(len(text) / _TRAIN_CHARS)))


def _vocab_size_error(message: str, kind: str, vocab_size: int) -> ConfigError | None:
    """Turn sentencepiece's vocabulary-size complaints into one line about the config field."""
    if "Vocabulary size too high" in message:
        found = re.search(r"<= (\d+)", message)
        limit = f"at most {found[1]} pieces can be learnt" if found else "choose a smaller one"
        return ConfigError(
            f"tokenizer.vocab_size={vocab_size} is too large for this training text: {limit} (kind={kind})"
        )
    if "smaller than required_chars" in message:
        found = re.search(r"required_chars\. \d+ vs (\d+)", message)
        need = f"at least {found[1]}" if found else "more"
        return ConfigError(
            f"tokenizer.vocab_size={vocab_size} is too small for this training text: it needs {need} "
            f"(256 byte-fallback pieces, unk, eos, newline and its common characters; kind={kind})"
        )
    return None


_KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "bpe": SentencePieceTokenizer,
    "unigram": SentencePieceTokenizer,
}


HF_FILES = "hf"  # the subdirectory of a saved llmlab tokenizer holding the transformers tokenizer files


class PretrainedTokenizer(Tokenizer):
    """A `transformers` tokenizer behind llmlab's interface: encode adds no special tokens, and special-token
    strings inside the text are split like any other text (split_special_tokens), so text never injects eos."""

    kind = "hf"

    def __init__(self, hf_tokenizer: Any, where: str) -> None:
        if hf_tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer at {where} has no eos token; llmlab separates documents with it")
        self.hf_tokenizer = hf_tokenizer
        self.eos_id = hf_tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, source: str, local_files_only: bool, path: str) -> PretrainedTokenizer:
        """The tokenizer of a transformers model directory (or hub id); errors name model.path=path."""
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only, split_special_tokens=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            text = str(e).strip()
            reason = text.splitlines()[0] if text else type(e).__name__
            raise ConfigError(f"model.path={path}: cannot load its tokenizer ({reason})") from None
        return cls(tok, path)

    @property
    def vocab_size(self) -> int:
        return len(self.hf_tokenizer)

    @property
    def bos_id(self) -> int:
        bos = self.hf_tokenizer.bos_token_id
        return self.eos_id if bos is None else bos

    def encode(self, text: str) -> list[int]:
        return self.hf_tokenizer.encode(text, add_special_tokens=False)

    def _decode(self, ids: list[int]) -> str:
        return self.hf_tokenizer.decode(ids)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        self.hf_tokenizer.save_pretrained(directory / HF_FILES)  # its own tokenizer.json would clash with llmlab's
        return {"files": HF_FILES}

    @classmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> PretrainedTokenizer:
        from transformers import AutoTokenizer

        files = directory / manifest["files"]
        return cls(AutoTokenizer.from_pretrained(files, local_files_only=True, split_special_tokens=True), str(files))


def _tokenizer_class(kind: str) -> type[Tokenizer]:
    return PretrainedTokenizer if kind == "hf" else _KINDS[kind]


def train_tokenizer(cfg: TokenizerConfig, train_text: str) -> Tokenizer:
    """A new tokenizer of ``cfg.kind`` learnt from ``train_text`` (no cache)."""
    if cfg.kind == "char":
        return CharTokenizer.train(train_text)
    if cfg.kind == "byte":
        return ByteTokenizer()
    return SentencePieceTokenizer.train(train_text, cfg.kind, cfg.vocab_size)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer ``save`` wrote to ``directory``; a missing or damaged one is a ConfigError."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {manifest.get('format')!r}, this llmlab reads {FORMAT_VERSION!r}")
        if "checksums" in manifest and checksums(directory, manifest) != manifest["checksums"]:  # older: none
            raise ValueError("its files do not match the checksums it was saved with (edited or damaged)")
        tokenizer = _tokenizer_class(manifest["kind"])._from_saved(directory, manifest)
        if tokenizer.vocab_size != manifest["vocab_size"]:
            raise ValueError(f"vocab_size {tokenizer.vocab_size}, the manifest says {manifest['vocab_size']}")
    except FileNotFoundError as e:
        raise ConfigError(f"no tokenizer at {directory}: {Path(e.filename or directory).name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the tokenizer at {directory}: {reason}") from None
    return tokenizer


def checksums(directory: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of the manifest's own fields and of every other file in the directory: a tokenizer is used only as
    it was saved (a char tokenizer's vocabulary lives in the manifest itself)."""
    fields = {k: v for k, v in manifest.items() if k != "checksums"}
    sums = {MANIFEST: hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        sums[str(path.relative_to(directory))] = sha256_file(path)
    return sums


def cache_key(cfg: TokenizerConfig, train_text: str) -> str:
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{cfg.kind}\0{cfg.vocab_size}\0".encode())
    digest.update(train_text.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def build_tokenizer(cfg: TokenizerConfig, train_text: str) -> tuple[Tokenizer, bool]:
    """The tokenizer for (cfg, text) and whether it came from the cache under ``cfg.cache_dir``."""
    entry = Path(cfg.cache_dir) / f"{cfg.kind}-{cache_key(cfg, train_text)[:16]}"
    stale = entry.exists()
    if stale and not cfg.retrain:
        try:
            return load_tokenizer(entry), True
        except ConfigError as err:  # incomplete or damaged: train again and replace it
            log.warning(f"warning: {err}; training the tokenizer again")
    tokenizer = train_tokenizer(cfg, train_text)
    _publish(tokenizer, entry)
    return tokenizer, False


def _publish(tokenizer: Tokenizer, entry: Path) -> None:
    """Readers never see half a directory: saved into a temporary sibling, then renamed into place."""
    try:
        with publishing(entry) as tmp:
            tokenizer.save(tmp)
    except OSError:
        if not (entry / MANIFEST).is_file():
            raise
        # Another process published this entry first; training is deterministic, so it is ours too.
