"""Data sources: where the text comes from and how it splits into train and validation.

A source yields documents; in the token stream each document is followed by the tokenizer's eos.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.config.schema import InductionDataConfig, SyntheticDataConfig, TextDataConfig
from llmlab.data.induction import RepeatedSpans, SpanDocuments, span_documents
from llmlab.data.synthetic import Copy, Language, sample_annotated_documents, sample_documents


@dataclass
class Source:
    name: str
    train_docs: list[str]
    val_docs: list[str]
    val_logprob: float | None = None  # exact log-probability of val_docs under their generator


@dataclass
class Corpus:
    sources: list[Source] = field(default_factory=list)

    @property
    def train_docs(self) -> list[str]:
        return [d for s in self.sources for d in s.train_docs]

    @property
    def val_docs(self) -> list[str]:
        return [d for s in self.sources for d in s.val_docs]

    @property
    def val_logprob(self) -> float | None:
        """Known only when every source knows its own."""
        values = [s.val_logprob for s in self.sources]
        return None if any(v is None for v in values) else sum(values)


def load_corpus(cfg: SyntheticDataConfig | InductionDataConfig | TextDataConfig) -> Corpus:
    if isinstance(cfg, SyntheticDataConfig):
        return Corpus([synthetic_source(cfg)])
    if isinstance(cfg, InductionDataConfig):
        return Corpus([induction_source(cfg)])
    return Corpus([text_source(path, cfg.val_fraction) for path in resolve_paths(cfg.paths)])


def synthetic_source(cfg: SyntheticDataConfig) -> Source:
    language = Language()
    # Train and validation come from distinct seeds, so they are independent samples.
    train, _ = sample_documents(language, cfg.train_docs, seed=cfg.seed)
    val, logprobs = sample_documents(language, cfg.val_docs, seed=cfg.seed + 1)
    return Source("synthetic", train, val, val_logprob=sum(logprobs))


def annotated_validation(cfg: SyntheticDataConfig) -> list[tuple[str, list[Copy]]]:
    """synthetic_source's validation documents, each with the spans it repeats (names, the code typed)."""
    return sample_annotated_documents(Language(), cfg.val_docs, seed=cfg.seed + 1)[0]


def span_generator(cfg: InductionDataConfig) -> RepeatedSpans:
    return RepeatedSpans(vocab=cfg.vocab, zipf=cfg.zipf, length=cfg.length, span=cfg.span, skip=cfg.skip)


def induction_validation(cfg: InductionDataConfig) -> SpanDocuments:
    """induction_source's validation documents with where each span repeats and every token's optimal
    log-probability."""
    return span_documents(span_generator(cfg), cfg.val_docs, seed=cfg.seed + 1, score=True)


def induction_source(cfg: InductionDataConfig) -> Source:
    """Documents with a repeated span; train and validation from distinct seeds. The floor is exact: the optimal
    predictor's log-probability of the validation documents (their end tokens free, as the generator places them)."""
    train = span_documents(span_generator(cfg), cfg.train_docs, seed=cfg.seed).texts
    val = induction_validation(cfg)
    return Source("induction", train, val.texts, val_logprob=float(val.logprobs.sum()))


DATA_DIR_VARIABLE = "LLMLAB_DATA_DIR"  # relative data paths resolve against this directory when it is set


def data_dir() -> Path:
    """Where relative data paths are looked up: $LLMLAB_DATA_DIR, else the working directory."""
    return Path(os.environ.get(DATA_DIR_VARIABLE) or ".")


def searched() -> str:
    """The directory relative paths were looked up in, as an error names it."""
    where = os.environ.get(DATA_DIR_VARIABLE)
    if where:
        return f"{where}, from {DATA_DIR_VARIABLE}"
    return f"{Path.cwd()}; set {DATA_DIR_VARIABLE} to look elsewhere"


def data_path(pattern: str) -> str:
    """A user's path or glob, resolved against LLMLAB_DATA_DIR when relative (and ~ expanded)."""
    path = Path(pattern).expanduser()
    return str(path if path.is_absolute() else data_dir() / path)


def resolve_paths(patterns: list[str], field: str = "data.paths") -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        full = data_path(pattern)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if glob.has_magic(full) and not matches:
            raise ConfigError(f"{field}: no file matches {pattern!r} (looked in {searched()})")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                raise ConfigError(f"{field}: {path} is a directory; give its files, or a glob such as "
                                  f"{path / '*.txt'}")
            if not path.is_file():
                raise ConfigError(f"{field}: file not found: {pattern} (looked in {searched()})")
            paths.append(path)
    return paths


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise ConfigError(f"data.paths: file is empty: {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"data.paths: {path}:{line}: not valid UTF-8 (byte {err.start}); save the file as UTF-8"
        ) from None


def text_source(path: Path, val_fraction: float) -> Source:
    """One file is one document; its last val_fraction (cut at a line break if one is near) is validation.
    A .jsonl file holds one document per record, in its `text` field (minimind's pretraining format); every
    round(1 / val_fraction)-th record validates, as `data=hf` splits rows."""
    if path.suffix == ".jsonl":
        return jsonl_text_source(path, val_fraction)
    text = read_text(path)
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", max(1, cut - 1000), cut)
    cut = newline + 1 if newline >= 0 else cut
    train, val = text[:cut], text[cut:]
    if not train or not val:
        raise ConfigError(f"data.paths: {path} is too short to split into train and validation")
    return Source(str(path), [train], [val])


def validation_period(val_fraction: float) -> int:
    """Row i (from 0) validates when (i + 1) % period == 0: a split that needs no row count, so it streams."""
    return max(2, round(1 / val_fraction))


def jsonl_text_source(path: Path, val_fraction: float) -> Source:
    docs = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: invalid JSON ({err.msg}, column {err.colno})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ConfigError(f"{path}:{lineno}: text: expected a record with a string `text` field "
                              "(one document per line)")
        docs.append(text)
    period = validation_period(val_fraction)
    train = [d for i, d in enumerate(docs) if (i + 1) % period]
    val = [d for i, d in enumerate(docs) if not (i + 1) % period]
    if not train or not val:
        raise ConfigError(f"data.paths: {path} has {len(docs)} records: too few to split into train and "
                          f"validation (every {period}th validates)")
    return Source(str(path), train, val)
