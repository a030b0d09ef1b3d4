"""`model=hf model.path=DIR`: a local `transformers` model directory (GPT-2, Llama or Qwen2 style) as an llmlab
model and tokenizer, for any stage and for `llmlab.analyze`.

Only config.json is read to decide the architecture, so a run can check it (and resume) before any weights
load; the weights come in their stored dtype and are cast while copied, so a bf16 1B model never exists twice
in fp32. Nothing is fetched from a hub unless `model.local_files_only=false`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, MoEConfig
from llmlab.data.tokenizers import PretrainedTokenizer
from llmlab.interop.hf import config_from_hf, hf_tensors, load_hf_state
from llmlab.weights import MAX_HEADER_BYTES, check_memory, check_tensors, read_header

DEFAULT_CONTEXT = 1024  # model.context_length=null: the model's own positions, at most this many
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"


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


def _architecture(cfg: ModelConfig, source: str) -> ModelConfig:
    """The architecture config.json declares, its full size (all of its positions)."""
    from transformers import AutoConfig

    try:
        hf_cfg = AutoConfig.from_pretrained(source, local_files_only=cfg.local_files_only)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.path={cfg.path}: cannot read its config ({_one_line(e)})") from None
    return config_from_hf(hf_cfg)


def _weight_files(cfg: ModelConfig, directory: Path) -> tuple[list[Path], Path] | None:
    """The safetensors files transformers would load from directory and the file that lists them; None when it
    holds neither model.safetensors nor an index (loading the weights then says so)."""
    prefix = f"model.path={cfg.path}: "
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS], directory / WEIGHTS
    index = directory / INDEX
    if not index.is_file():
        return None
    if index.stat().st_size > MAX_HEADER_BYTES:
        raise ConfigError(f"{prefix}{index} is {index.stat().st_size} bytes, more than an index can be "
                          f"({MAX_HEADER_BYTES})")
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        raise ConfigError(f"{prefix}{index} is not a JSON object") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ConfigError(f"{prefix}{index}: expected a \"weight_map\" of tensor names to safetensors files")
    files = []
    for name in dict.fromkeys(weight_map.values()):
        shard = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not shard.is_file():
            raise ConfigError(f"{prefix}{index} names {name!r:.100}, which is not a file in {directory}")
        files.append(shard)
    return files, index


def check_weight_files(cfg: ModelConfig, source: str, arch: ModelConfig) -> None:
    """A local directory's safetensors headers hold every tensor config.json's model needs, as floats of its
    shapes; ConfigError naming the file and the first tensor that differs. Nothing to check for a hub id or a
    directory without weights."""
    directory = Path(source)
    weights = _weight_files(cfg, directory) if directory.is_dir() else None
    if weights is None:
        return
    files, listing = weights
    prefix = f"model.path={cfg.path}: "
    found = {}
    for file in files:
        found.update(read_header(file, prefix))
    check_tensors(found, hf_tensors(arch), f"{directory / 'config.json'}", str(listing), prefix, strict=False)


ROUTER_TRAINING = ("aux_loss_coef", "z_loss_coef", "bias_rate")  # model.moe's fields that shape no weight


def check_moe_applies(cfg: ModelConfig, arch: ModelConfig) -> None:
    """ConfigError naming a model.moe architecture field set to other than its default and the imported model's."""
    default = MoEConfig()
    for field in dataclasses.fields(MoEConfig):
        if field.name in ROUTER_TRAINING:
            continue
        asked, there = getattr(cfg.moe, field.name), getattr(arch.moe, field.name)
        if asked != getattr(default, field.name) and asked != there:
            what = f"{arch.moe.experts} experts" if arch.moe.experts else "dense"
            raise ConfigError(f"model.moe.{field.name}={asked} cannot apply to model.path={cfg.path}: its config.json "
                              f"decides the architecture ({what}, moe.{field.name}={there}); leave model.moe.* "
                              "but its router training (aux_loss_coef, z_loss_coef, bias_rate) unset")


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """cfg with the architecture of the model at cfg.path; every option that is not architecture stays (name, path,
    context_length, dropout, LoRA adapters, a mixture's router loss weights). An architecture option set to something
    the model at cfg.path is not (model.moe.experts=4 on a dense model) is refused: it cannot apply.

    Before anything is built from it: the weight files' headers must hold what config.json declares, and the
    model (at the run's context) must fit in memory in fp32."""
    source = _source(cfg)
    arch = _architecture(cfg, source)
    length = cfg.context_length or min(arch.context_length, DEFAULT_CONTEXT)
    if length > arch.context_length:
        raise ConfigError(f"model.context_length={length} exceeds the {arch.context_length} positions of {cfg.path}")
    check_weight_files(cfg, source, arch)
    # context_length is the run's sequence length: RoPE tables and GPT-2's position table stop there
    check_moe_applies(cfg, arch)
    router = {f: getattr(cfg.moe, f) for f in ROUTER_TRAINING}  # how the router trains, not what it is
    resolved = dataclasses.replace(arch, name=cfg.name, path=cfg.path, local_files_only=cfg.local_files_only,
                                   context_length=length, dropout=cfg.dropout, lora=cfg.lora,
                                   moe=dataclasses.replace(arch.moe, **router))
    check_memory(resolved, f"model.path={cfg.path}")
    return resolved


def load_pretrained_weights(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """Copy the weights at cfg.path into model (built from resolve_model_config(cfg))."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    source = _source(cfg)
    check_weight_files(cfg, source, _architecture(cfg, source))  # the files may have changed since resolving
    logging.disable_progress_bar()  # one bar per load in the middle of a run's console output
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, local_files_only=cfg.local_files_only,
                                                        dtype="auto", use_safetensors=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ConfigError(f"model.path={cfg.path}: cannot load its weights ({_one_line(e)}); expected "
                          "model.safetensors or a sharded model.safetensors.index.json") from None
    load_hf_state(model, hf_model.state_dict())


def pretrained_tokenizer(cfg: ModelConfig) -> PretrainedTokenizer:
    """The tokenizer of the model at cfg.path."""
    return PretrainedTokenizer.from_pretrained(_source(cfg), cfg.local_files_only, cfg.path)
