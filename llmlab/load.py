"""Load what a run trained: the model from its latest (or a given) checkpoint and its tokenizer."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.tokenizers import Tokenizer, load_tokenizer
from llmlab.model.transformer import Transformer
from llmlab.train import checkpoint as ckpt


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[Transformer, Tokenizer, Path]:
    """path: a run directory, its checkpoints/ directory, or one checkpoints/step_<N> directory."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run={path}: no such directory")
    if (path / ckpt.MANIFEST).is_file():  # one checkpoint named explicitly: it must be intact
        checkpoint, manifest = path, ckpt.verify_checkpoint(path)
    else:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        checkpoint, skipped = ckpt.newest_intact(root)
        for reason in skipped:
            print(f"warning: {reason}; using an earlier checkpoint", file=sys.stderr)
        if checkpoint is None:
            raise ConfigError(f"run={path}: no complete checkpoint in it (has the run saved one yet?)")
        manifest = ckpt.read_manifest(checkpoint)  # newest_intact has verified it
    known = {f.name for f in fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in manifest["model"].items() if k in known})
    if manifest.get("weights") == ckpt.ADAPTERS_ONLY:
        model = base_model(manifest, model_cfg, checkpoint)
    else:
        model = Transformer.uninitialized(model_cfg)  # every weight comes from the checkpoint
    ckpt.load_weights(checkpoint, model)
    tokenizer_dir = checkpoint.parent.parent / "tokenizer"
    return model.to(device).eval(), load_tokenizer(tokenizer_dir), checkpoint


def base_model(manifest: dict, model_cfg: ModelConfig, checkpoint: Path) -> Transformer:
    """A LoRA checkpoint's base (stage.init_from's model or the imported one) with its marker embeddings and
    fresh adapters, ready for the checkpoint's adapters."""
    from llmlab.model.lora import apply_lora

    base = manifest.get("base")
    if not base:
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
    model.resize_vocab(model_cfg.vocab_size)
    model.cfg = model_cfg
    lora = model_cfg.lora
    apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
    return model.train()
