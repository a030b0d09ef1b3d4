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
    model = Transformer.uninitialized(model_cfg)  # every weight comes from the checkpoint
    ckpt.load_weights(checkpoint, model)
    tokenizer_dir = checkpoint.parent.parent / "tokenizer"
    return model.to(device).eval(), load_tokenizer(tokenizer_dir), checkpoint
