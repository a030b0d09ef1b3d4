"""`python -m llmlab.export run=<run dir> out=<dir>`: a run's latest checkpoint as a `transformers` model directory.

The directory loads with `AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)`
and no custom code; llmlab_export.json says where the tokenizer's ids or text can differ from llmlab's (only
unigram ties and decoding of invalid byte sequences). It is written under a temporary name and renamed into
place, and an existing directory is never replaced unless `overwrite=true`.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.commands import ExportConfig
from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.files import publishing
from llmlab.store import CONF_DIR, to_dataclass


def export_run(cfg: ExportConfig) -> Path:
    """Write the export; returns its directory."""
    from transformers.utils import logging

    from llmlab.interop.hf import hf_family, to_hf
    from llmlab.interop.hf_tokenizer import save_hf_tokenizer
    from llmlab.load import load_trained

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out={out} exists and is not empty; choose another directory or overwrite=true")
    model, tokenizer, checkpoint = load_trained(cfg.run)
    if model.cfg.lora.rank:
        raise ConfigError(f"run={cfg.run} holds LoRA adapters: merge them first "
                          "(python -m llmlab.merge_lora run=... out=...), then export the merged run")
    family = hf_family(model.cfg)
    hf_model = to_hf(model)
    logging.disable_progress_bar()  # transformers' shard-writing bar
    for config in (hf_model.config, hf_model.generation_config):  # generate stops where llmlab's does
        config.bos_token_id, config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    with publishing(out) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer_entry = save_hf_tokenizer(tokenizer, tmp)
        (tmp / "llmlab_export.json").write_text(json.dumps(
            {"family": family, "checkpoint": str(checkpoint.resolve()), "tokenizer": tokenizer_entry}, indent=2))
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        out = export_run(to_dataclass(cfg))
    print(f"exported to {out}: load it with transformers.AutoModelForCausalLM.from_pretrained('{out}')")


if __name__ == "__main__":
    main()
