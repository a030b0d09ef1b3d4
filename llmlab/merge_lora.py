"""`python -m llmlab.merge_lora run=<LoRA run> out=<dir>`: fold a LoRA run's adapters into plain weights.

The LoRA run's checkpoints hold only adapters and name their base; the merged directory holds a full
checkpoint and the tokenizer, like any run, so generate, evaluate, export and stage.init_from take it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import MergeConfig
from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.rundir import RunDir
from llmlab.store import CONF_DIR, to_dataclass


def merge_run(cfg: MergeConfig) -> Path:
    from llmlab.config.schema import LoRAConfig
    from llmlab.load import load_trained
    from llmlab.model.lora import merge_lora
    from llmlab.stages import is_chat_checkpoint
    from llmlab.train import checkpoint as ckpt

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out} exists and is not empty; choose a new directory")
    model, tokenizer, checkpoint = load_trained(cfg.run)
    if not merge_lora(model):
        raise ConfigError(f"run={cfg.run}: no LoRA adapters to merge (model.lora.rank was 0)")
    model.cfg = dataclasses.replace(model.cfg, lora=LoRAConfig())
    manifest = ckpt.read_manifest(checkpoint)
    tokenizer.save(RunDir(out).tokenizer)
    ckpt.save_checkpoint(RunDir(out).checkpoints, manifest["step"], model, {},
                         {"model": dataclasses.asdict(model.cfg), "stage": manifest.get("stage"),
                          "chat": is_chat_checkpoint(manifest), "merged_from": str(checkpoint.resolve())})
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="merge_lora")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        out = merge_run(to_dataclass(cfg))
    print(f"merged into {out}")


if __name__ == "__main__":
    quote_arguments()
    main()
