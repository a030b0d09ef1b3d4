"""Data sources: where the text comes from and how it splits into train and validation.

A source yields documents; in the token stream each document is followed by the tokenizer's eos.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.config.schema import SyntheticDataConfig, TextDataConfig
from llmlab.data.synthetic import Language, NameCopy, sample_annotated_documents, sample_documents


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


def load_corpus(cfg: SyntheticDataConfig | TextDataConfig) -> Corpus:
    if isinstance(cfg, SyntheticDataConfig):
        return Corpus([synthetic_source(cfg)])
    return Corpus([text_source(path, cfg.val_fraction) for path in resolve_paths(cfg.paths)])


def synthetic_source(cfg: SyntheticDataConfig) -> Source:
    language = Language()
    # Train and validation come from distinct seeds, so they are independent samples.
    train, _ = sample_documents(language, cfg.train_docs, seed=cfg.seed)
    val, logprobs = sample_documents(language, cfg.val_docs, seed=cfg.seed + 1)
    return Source("synthetic", train, val, val_logprob=sum(logprobs))


def annotated_validation(cfg: SyntheticDataConfig) -> list[tuple[str, list[NameCopy]]]:
    """synthetic_source's validation documents, each with the names it repeats from its introduction."""
    return sample_annotated_documents(Language(), cfg.val_docs, seed=cfg.seed + 1)[0]


def resolve_paths(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if glob.has_magic(pattern) and not matches:
            raise ConfigError(f"data.paths: no file matches {pattern!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                raise ConfigError(f"data.paths: {path} is a directory; give its files, or a glob such as "
                                  f"{path / '*.txt'}")
            if not path.is_file():
                raise ConfigError(f"data.paths: file not found: {path}")
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
    """One file is one document; its last val_fraction (cut at a line break if one is near) is validation."""
    text = read_text(path)
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", max(1, cut - 1000), cut)
    cut = newline + 1 if newline >= 0 else cut
    train, val = text[:cut], text[cut:]
    if not train or not val:
        raise ConfigError(f"data.paths: {path} is too short to split into train and validation")
    return Source(str(path), [train], [val])
