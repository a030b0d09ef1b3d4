"""Load what a run trained: the model from its latest (or a given) checkpoint and its tokenizer.

Nothing is built before the checkpoint's header has been checked against its manifest's model (names, shapes,
float dtypes) and that model's fp32 size against the memory available (llmlab.weights): a forged manifest is
one line, never a 200 GB allocation.
"""

from __future__ import annotations

import logging
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, architecture_differences, saved_model_section
from llmlab.data.tokenizers import Tokenizer, load_tokenizer
from llmlab.model.transformer import Transformer
from llmlab.rundir import RunDir
from llmlab.train import checkpoint as ckpt
from llmlab.weights import check_memory, check_model_file, read_header

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


def load_trained(path: str | Path, device: torch.device | str = "cpu", checkpoint: str = "latest"
                 ) -> tuple[Transformer, Tokenizer, Path]:
    """path: a run directory, its checkpoints/ directory, or one checkpoints/step_<N> directory; checkpoint: which
    of a run's (latest | best | step_<N>)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run={path}: no such directory")
    chosen, manifest, skipped = ckpt.select_checkpoint(path, checkpoint)
    for reason in skipped:
        log.warning(f"warning: {reason}; using an earlier checkpoint")
    if chosen is None:
        raise ConfigError(f"run={path}: no complete checkpoint in it (has the run saved one yet?)")
    model_cfg = manifest_model_config(manifest, chosen)
    adapters_only = manifest.get("weights") == ckpt.ADAPTERS_ONLY
    check_checkpoint(chosen, model_cfg, adapters_only)  # before anything is allocated
    if adapters_only:
        model = base_model(manifest, model_cfg, chosen)
    else:
        model = Transformer.uninitialized(model_cfg)  # every weight comes from the checkpoint
    try:
        ckpt.load_weights(chosen, model)
    except SafetensorError as e:  # checked above; a file changed since is still one line
        raise ConfigError(f"checkpoint file {chosen / WEIGHTS}: {str(e).strip().splitlines()[0]}") from None
    return model.to(device).eval(), load_tokenizer(RunDir.of_checkpoint(chosen).tokenizer), chosen


def check_checkpoint(checkpoint: Path, model_cfg: ModelConfig, adapters_only: bool) -> None:
    """The checkpoint's weight file holds what its manifest's model needs (the adapters alone for a LoRA
    checkpoint: its base is checked where it is loaded), and that model fits in memory; ConfigError otherwise."""
    file = checkpoint / WEIGHTS
    declared = f"the model in {checkpoint / ckpt.MANIFEST}"
    found = read_header(file, prefix="checkpoint file ")
    check_model_file(found, model_cfg, declared, str(file), prefix="checkpoint file ", adapters=adapters_only)
    check_memory(model_cfg, f"checkpoint {checkpoint / ckpt.MANIFEST}")


def manifest_model_config(manifest: dict, checkpoint: Path) -> ModelConfig:
    """The ModelConfig a manifest records, its values type-checked first (a manifest is a file, and may lie)."""
    where = checkpoint / ckpt.MANIFEST
    section = manifest.get("model")
    if not isinstance(section, dict):
        raise ConfigError(f"checkpoint {where}: no model settings in it (expected a \"model\" object)")
    values = _typed(saved_model_section(section), ModelConfig, "model", where)
    try:
        cfg = ModelConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"checkpoint {where}: {e}") from None
    if cfg.vocab_size is None or cfg.vocab_size < 1:
        raise ConfigError(f"checkpoint {where}: model.vocab_size must be a positive integer, got {cfg.vocab_size}")
    return cfg


def _typed(section: dict, cls: type, prefix: str, where: Path) -> dict:
    """section's keys that are fields of the dataclass cls (others are ignored), each checked against its type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name not in section:
            continue
        value, hint = section[f.name], hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        nested = [o for o in options if is_dataclass(o)]
        if nested and isinstance(value, dict):
            out[f.name] = _typed(value, nested[0], f"{prefix}.{f.name}", where)  # ModelConfig builds it
            continue
        if not any(_fits(value, o) for o in options):
            expected = " or ".join(_type_name(o) for o in options)
            raise ConfigError(f"checkpoint {where}: {prefix}.{f.name}: expected {expected}, got {value!r:.60}")
        out[f.name] = value
    return out


def _fits(value: object, hint: object) -> bool:
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (object,)
        return isinstance(value, list) and all(item is object or _fits(v, item) for v in value)
    return False


def _type_name(hint: object) -> str:
    if hint is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is list:
        return "a list of strings" if typing.get_args(hint) == (str,) else "a list"
    return "an object" if is_dataclass(hint) else str(hint)


def base_model(manifest: dict, model_cfg: ModelConfig, checkpoint: Path) -> Transformer:
    """A LoRA checkpoint's base (stage.init_from's model or the imported one) with its marker embeddings and
    fresh adapters, ready for the checkpoint's adapters."""
    from llmlab.model.lora import apply_lora

    base = manifest.get("base")
    if not base or not isinstance(base, str):
        raise ConfigError(f"checkpoint {checkpoint} holds LoRA adapters but names no base model")
    if base.startswith("hf:"):
        from llmlab.interop.hf_import import load_pretrained_weights, resolve_model_config

        model = Transformer.uninitialized(resolve_model_config(model_cfg))  # the directory's own vocabulary
        load_pretrained_weights(model, model_cfg)
    else:
        try:
            model, _, _ = load_trained(base)
        except ConfigError as e:
            raise ConfigError(f"checkpoint {checkpoint} adapts {base}, which cannot be loaded: {e}") from None
    differing = architecture_differences(manifest["model"], model.cfg)  # the adapters were checked against these
    if differing:
        pairs = ", ".join(f"model.{k}: {here!r} here vs {there!r} there" for k, here, there in differing)
        raise ConfigError(f"checkpoint {checkpoint} adapts {base}, a model of another architecture ({pairs})")
    model.resize_vocab(model_cfg.vocab_size)
    model.cfg = model_cfg
    lora = model_cfg.lora
    try:
        apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
    except ValueError as e:
        raise ConfigError(f"checkpoint {checkpoint}: {e}") from None
    return model.train()
