"""`model=hf model.path=DIR`: a local `transformers` model directory (GPT-2, Llama or Qwen2 style) as an llmlab
model and tokenizer, for any stage and for `llmlab.analyze`.

Only config.json is read to decide the architecture, so a run can check it (and resume) before any weights
load; the weights come in their stored dtype and are cast while copied, so a bf16 1B model never exists twice
in fp32. Nothing is fetched from a hub unless `model.local_files_only=false`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.tokenizers import Tokenizer
from llmlab.interop.hf import config_from_hf, load_hf_state

DEFAULT_CONTEXT = 1024  # model.context_length=null: the model's own positions, at most this many
HF_FILES = "hf"  # the subdirectory of a saved llmlab tokenizer holding the transformers tokenizer files


def _source(cfg: ModelConfig) -> str:
    """cfg.path checked: a local model directory, or (local_files_only=false) a hub id left to transformers."""
    path = Path(cfg.path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={cfg.path}: no config.json in it; expected a transformers model "
                              "directory (config.json, model.safetensors and the tokenizer files)")
        return str(path)
    if cfg.local_files_only:
        raise ConfigError(f"model.path={cfg.path}: no such directory (model.local_files_only=true: nothing is "
                          "downloaded; set model.local_files_only=false to fetch a hub model when online)")
    return cfg.path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """cfg with the architecture of the model at cfg.path; its name, path, context_length and dropout stay."""
    from transformers import AutoConfig

    source = _source(cfg)
    try:
        hf_cfg = AutoConfig.from_pretrained(source, local_files_only=cfg.local_files_only)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.path={cfg.path}: cannot read its config ({_one_line(e)})") from None
    arch = config_from_hf(hf_cfg)
    length = cfg.context_length or min(arch.context_length, DEFAULT_CONTEXT)
    if length > arch.context_length:
        raise ConfigError(f"model.context_length={length} exceeds the {arch.context_length} positions of {cfg.path}")
    # context_length is the run's sequence length: RoPE tables and GPT-2's position table stop there
    return dataclasses.replace(arch, name=cfg.name, path=cfg.path, local_files_only=cfg.local_files_only,
                               context_length=length, dropout=cfg.dropout)


def load_pretrained_weights(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """Copy the weights at cfg.path into model (built from resolve_model_config(cfg))."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # one bar per load in the middle of a run's console output
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(_source(cfg), local_files_only=cfg.local_files_only,
                                                        dtype="auto", use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model.path={cfg.path}: cannot load its weights ({_one_line(e)}); expected "
                          "model.safetensors or a sharded model.safetensors.index.json") from None
    load_hf_state(model, hf_model.state_dict())


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
    def from_model_dir(cls, cfg: ModelConfig) -> PretrainedTokenizer:
        from transformers import AutoTokenizer

        source = _source(cfg)
        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=cfg.local_files_only,
                                                split_special_tokens=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"model.path={cfg.path}: cannot load its tokenizer ({_one_line(e)})") from None
        return cls(tok, cfg.path)

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
