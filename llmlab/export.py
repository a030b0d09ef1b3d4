"""`python -m llmlab.export run=<run dir> out=<dir>`: a run's latest checkpoint as a `transformers` model directory.

The directory loads with `AutoModelForCausalLM.from_pretrained(out)` and no custom code. It is written under a
temporary name and renamed into place, and an existing directory is never replaced unless `overwrite=true`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.config.store import CONF_DIR, to_dataclass


@dataclass
class ExportConfig:
    run: str = "???"  # a run directory or one of its checkpoints
    out: str = "???"  # the directory to write
    overwrite: bool = False  # replace `out` if it exists


ConfigStore.instance().store(name="base_export", node=ExportConfig)


def export_run(cfg: ExportConfig) -> Path:
    """Write the export; returns its directory."""
    from llmlab.interop.hf import hf_family, to_hf
    from llmlab.load import load_trained

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out={out} exists and is not empty; choose another directory or overwrite=true")
    model, _, checkpoint = load_trained(cfg.run)
    family = hf_family(model.cfg)
    hf_model = to_hf(model)
    tmp = out.parent / f".tmp_{out.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.save_pretrained(tmp)
    (tmp / "llmlab_export.json").write_text(json.dumps(
        {"family": family, "checkpoint": str(checkpoint.resolve()),
         "tokenizer": "not exported yet: use the run's tokenizer/ (llmlab.data.tokenizers.load_tokenizer)"},
        indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        out = export_run(to_dataclass(cfg))
    print(f"exported to {out}: load it with transformers.AutoModelForCausalLM.from_pretrained('{out}')")


if __name__ == "__main__":
    main()
