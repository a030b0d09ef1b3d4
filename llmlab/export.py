"""`python -m llmlab.export run=<run dir> out=<dir>`: a run's latest checkpoint as a `transformers` model directory;
`card=true` adds a model card (README.md), `push=<user>/<name>` uploads the directory to the Hugging Face Hub.

The directory loads with `AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)`
and no custom code; llmlab_export.json says where the tokenizer's ids or text can differ from llmlab's (only
unigram ties and decoding of invalid byte sequences), and lists the files the export wrote. It is written under a
temporary name and renamed into place (temporary directories a killed export left beside it are removed first).

An existing non-empty `out` is refused unless `overwrite=true`, and even then only an earlier export is replaced:
a directory holding llmlab_export.json and nothing the export did not write. Never the working directory or one
that holds it, the run being exported, one that holds it or anything inside it, nor a file.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.card import CARD, check_push, model_card, push_export
from llmlab.config.argv import quote_arguments
from llmlab.config.commands import ExportConfig
from llmlab.config.errors import ConfigError, exit_on_config_error, first_few
from llmlab.files import publishing, remove_temporaries
from llmlab.rundir import RunDir
from llmlab.store import CONF_DIR, to_dataclass
from llmlab.train.checkpoint import read_manifest

RECORD = "llmlab_export.json"  # what marks a directory as an export (and lists the files it wrote)


def run_root(run: Path) -> Path:
    """The run directory that `run` (a run, its checkpoints/ or one checkpoint, as load_trained takes) is part of."""
    return RunDir.containing(run).root


def check_outside_run(out: Path, shown: str, run: Path, run_shown: str) -> None:
    target, root = out.resolve(), run.resolve()
    where = ("is" if target == root else "holds" if target in root.parents else
             "is inside" if root in target.parents else None)
    if where:
        raise ConfigError(f"{shown} {where} the run being exported (run={run_shown}); an export never writes "
                          "there: choose a directory outside the run")


def read_record(out: Path) -> tuple[dict | None, str]:
    """An earlier export's llmlab_export.json, or None and why out is not taken for one."""
    path = out / RECORD
    if not path.is_file():
        return None, f"no {RECORD} in it"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"its {RECORD} is not readable ({type(err).__name__})"
    if not isinstance(record, dict) or "checkpoint" not in record:
        return None, f"its {RECORD} is not an export record"
    return record, ""


def foreign_entries(out: Path, record: dict) -> list[str]:
    """What in an earlier export's directory that export did not write: files its record does not list (an export
    from before the record listed its files: any file may be its own), any directory or link."""
    listed = record.get("files")
    written = set(listed) if isinstance(listed, list) and all(isinstance(f, str) for f in listed) else None
    found = []
    for dirpath, dirnames, filenames in os.walk(out):
        base = Path(dirpath).relative_to(out)
        for name in sorted(dirnames):
            found.append(f"{(base / name).as_posix()}/")  # an export writes no directories
        dirnames.clear()
        for name in sorted(filenames):
            rel, path = (base / name).as_posix(), Path(dirpath, name)
            if name == RECORD and base == Path("."):
                continue
            if path.is_symlink() or not path.is_file() or (written is not None and rel not in written):
                found.append(rel)
    return found


def check_out(out_arg: str, run_arg: str, overwrite: bool) -> Path:
    """The absolute directory to publish the export as; ConfigError (naming `out`) where writing there could
    destroy anything but an earlier export."""
    shown, out = f"out={out_arg}", Path(os.path.abspath(out_arg))
    if out.is_symlink():
        raise ConfigError(f"{shown} is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{shown} is a file, not a directory: choose a directory for the export")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{shown}: {existing} is a file, so no directory can be made under it")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        where = "is" if out.resolve() == cwd else "holds"
        raise ConfigError(f"{shown} {where} the working directory; an export never replaces it: "
                          "choose a new directory, e.g. out=exported/<name>")
    check_outside_run(out, shown, run_root(Path(run_arg)), run_arg)
    try:
        if not out.is_dir() or not any(out.iterdir()):
            return out
    except OSError as err:
        raise ConfigError(f"{shown} cannot be read ({err.strerror}): choose another directory") from None
    record, why_not = read_record(out)
    if record is None:
        if overwrite:
            raise ConfigError(f"{shown} is not an earlier export ({why_not}), and overwrite=true only ever replaces "
                              "an export: choose another directory")
        raise ConfigError(f"{shown} exists and is not empty, and is not an earlier export ({why_not}): "
                          "choose another directory")
    if not overwrite:
        raise ConfigError(f"{shown} exists and is not empty; choose another directory or overwrite=true")
    foreign = foreign_entries(out, record)
    if foreign:
        raise ConfigError(f"{shown} is an earlier export but also holds what no export wrote "
                          f"({first_few(foreign, 3)}); "
                          "overwrite=true would delete it: move that out first, or choose another directory")
    return out


def export_run(cfg: ExportConfig) -> Path:
    """Write the export (with its model card if cfg.card, then uploaded if cfg.push); returns its directory."""
    out = check_out(cfg.out, cfg.run, cfg.overwrite)  # before anything is loaded, and again once the run is known
    token = check_push(cfg.push) if cfg.push else None  # at once: not after the export

    from transformers.utils import logging

    from llmlab.data.chat_template import ChatTemplate
    from llmlab.interop.hf import hf_family, to_hf
    from llmlab.interop.hf_tokenizer import save_hf_tokenizer
    from llmlab.load import load_trained
    from llmlab.run_info import read_run_info
    from llmlab.stages import is_chat_checkpoint

    model, tokenizer, checkpoint = load_trained(cfg.run, checkpoint=cfg.checkpoint)
    check_outside_run(out, f"out={cfg.out}", RunDir.of_checkpoint(checkpoint).root, cfg.run)
    if model.cfg.lora.rank:
        raise ConfigError(f"run={cfg.run} holds LoRA adapters: merge them first "
                          "(python -m llmlab.merge_lora run=... out=...), then export the merged run")
    family = hf_family(model.cfg)
    hf_model = to_hf(model)
    manifest = read_manifest(checkpoint)
    chat = is_chat_checkpoint(manifest)
    logging.disable_progress_bar()  # transformers' shard-writing bar
    for config in (hf_model.config, hf_model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    # generate stops where llmlab's does: a chat model at the end of its reply, others at the end of the document
    hf_model.generation_config.eos_token_id = ChatTemplate(tokenizer).end_id if chat else tokenizer.eos_id
    hf_model.generation_config.pad_token_id = tokenizer.eos_id
    # what publishing(out) left beside out when an export was killed mid-write: .tmp_<name>.<8 random>[.old]
    remove_temporaries(out.parent, glob.escape(out.name) + "." + "[!.]" * 8)
    with publishing(out) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer_entry = save_hf_tokenizer(tokenizer, tmp, chat=chat)
        if cfg.card:
            info = read_run_info(checkpoint, manifest)
            (tmp / CARD).write_text(model_card(info, cfg, family, chat), encoding="utf-8")
            for problem in info.problems:  # the card says so too; a reader of the console should not miss it
                print(f"warning: the model card cannot vouch for the run: {problem}", file=sys.stderr)
            if info.base and not cfg.base_model:
                print(f"note: the card names no base_model: {info.base} is a local directory; give "
                      "base_model=<its Hub id> once it is on the Hub")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / RECORD).write_text(json.dumps(
            {"family": family, "checkpoint": str(checkpoint.resolve()), "tokenizer": tokenizer_entry,
             "files": [*files, RECORD]}, indent=2))
    if cfg.push:
        print(f"exported to {cfg.out}; uploading to {cfg.push}", flush=True)
        print(f"pushed: {push_export(out, cfg.push, token)}")
    return Path(cfg.out)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        out = export_run(to_dataclass(cfg))
    print(f"exported to {out}: load it with transformers.AutoModelForCausalLM.from_pretrained('{out}')")


if __name__ == "__main__":
    quote_arguments()
    main()
