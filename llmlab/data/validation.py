"""A pretraining run's validation split rebuilt from its recorded data config, for scoring a checkpoint on every
validation token after the run (python -m llmlab.evaluate): the same documents, encoded by the run's own
tokenizer, so the windows are the ones the run scored itself on at its end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from llmlab.config.errors import ConfigError
from llmlab.config.schema import (
    HFDataConfig,
    InductionDataConfig,
    MixDataConfig,
    SyntheticDataConfig,
    TextDataConfig,
)
from llmlab.data.pipeline import encode_documents
from llmlab.data.sources import load_corpus
from llmlab.data.tokenizers import Tokenizer

PRETRAINING = {"synthetic": SyntheticDataConfig, "induction": InductionDataConfig, "text": TextDataConfig,
               "hf": HFDataConfig, "mix": MixDataConfig}


def validation_streams(data: dict, tokenizer: Tokenizer, cache_dir: Path) -> list[np.ndarray] | None:
    """The validation token streams of a run's `data` node (config_resolved.yaml); None for data that is not a
    pretraining corpus (conversations, preference pairs: a chat run is scored on its tasks instead)."""
    schema = PRETRAINING.get(data.get("kind"))
    if schema is None or (schema is HFDataConfig and data.get("kind") != "hf"):
        return None
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except Exception as exc:  # a config from another version of llmlab
        raise ConfigError(f"the run's data config cannot be read back ({str(exc).splitlines()[0]})") from None
    if isinstance(cfg, HFDataConfig | MixDataConfig):
        from llmlab.data.prepared import prepare_sources

        return [p.val for p in prepare_sources(cfg, tokenizer, cache_dir, progress=False)]
    return [encode_documents(tokenizer, load_corpus(cfg).val_docs)]
