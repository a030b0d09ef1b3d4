"""`model=hf model.path=DIR`: a local `transformers` model directory (GPT-2, Llama or Qwen2 style) as an llmlab
model and tokenizer, for any stage and for `llmlab.analyze`.

Only config.json is read to decide the architecture, so a run can check it (and resume) before any weights
load; the weights come in their stored dtype and are cast while copied, so a bf16 1B model never exists twice
in fp32. Nothing is fetched from a hub unless `model.local_files_only=false`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.tokenizers import PretrainedTokenizer
from llmlab.interop.hf import config_from_hf, load_hf_state

DEFAULT_CONTEXT = 1024  # model.context_length=null: the model's own positions, at most this many


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


def pretrained_tokenizer(cfg: ModelConfig) -> PretrainedTokenizer:
    """The tokenizer of the model at cfg.path."""
    return PretrainedTokenizer.from_pretrained(_source(cfg), cfg.local_files_only, cfg.path)
