"""A run's final record: metrics.json (what a sweep report reads) and TensorBoard's HParams entry."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from llmlab.config.schema import RunConfig
from llmlab.files import write_atomic
from llmlab.rundir import RunDir
from llmlab.rundir.summary import HPARAM_METRICS, RunSummary
from llmlab.train.tb_layout import pinned_url
from llmlab.train.trainer import TrainResult

log = logging.getLogger(__name__)


def write_run_record(out: Path, cfg: RunConfig, stats: dict, model, device, place) -> None:
    """dataset_stats.json, config_resolved.yaml and the model's size, before the first step."""
    (RunDir(out).dataset_stats).write_text(json.dumps(stats, indent=2))
    write_atomic(RunDir(out).config, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    ranks = f" x {place.world_size} processes ({cfg.trainer.strategy})" if place.enabled else ""
    active = model.active_params() if getattr(model, "inactive_params", lambda: 0)() else None
    per_token = f", {active:,} active per token" if active else ""  # a mixture of experts
    log.info(f"model: {model.num_params():,} parameters ({model.num_params(include_embeddings=False):,} without "
             f"embeddings{per_token}) on {device}{ranks}")


def final_summary(result: TrainResult, stats: dict, best_val: float, **measured) -> RunSummary:
    """metrics.json's record of a run that ended with `result`; measured: the other RunSummary fields by name."""
    return RunSummary.of_run(result.status, result.message, result.steps, result.tokens_seen, result.val_loss,
                             result.train_loss, stats, best_val, wall_s=result.wall_s,
                             tokens_per_s=result.tokens_per_s or None, timing=result.timing, **measured)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"n_layers": 2}} -> {"model.n_layers": 2}: a config's leaves under their dotted names."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def hparams_of(cfg: RunConfig, overrides: Sequence[str] = ()) -> dict:
    """The settings a sweep compares: the model, the main trainer knobs, data, tokenizer, seed first; then every
    other leaf of the config and every command-line override (`arch=gpt2` names no leaf), so whatever a sweep
    varies is there for TensorBoard's HParams view."""
    flat = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()}
    flat.update({f"trainer.{k}": getattr(cfg.trainer, k) for k in (
        "lr", "batch_size", "max_steps", "warmup_steps", "weight_decay", "grad_clip", "precision")})
    flat.update({"tokenizer.kind": cfg.tokenizer.kind, "tokenizer.vocab_size": cfg.tokenizer.vocab_size,
                 "data.kind": getattr(cfg.data, "kind", "?"), "stage.name": cfg.stage.name, "seed": cfg.seed})
    for key, value in flatten(OmegaConf.to_container(OmegaConf.structured(cfg))).items():
        flat.setdefault(key, value)
    for override in overrides:
        key, _, value = override.partition("=")
        if not key.startswith("hydra."):  # where the run was written, not how it was configured
            flat.setdefault(key.lstrip("+~"), value)
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}


def log_hparams(writer, cfg: RunConfig, summary: dict, overrides: Sequence[str] = (), experiment: bool = True
                ) -> None:
    """HParams for TensorBoard, in the run's own event file (add_hparams would open a timestamped sub-run).
    experiment=False leaves out the experiment record (which columns the view shows): a sweep's jobs leave it to
    the sweep report, which writes one for all of them (llmlab.sweep.hparams)."""
    from torch.utils.tensorboard.summary import hparams

    metrics = {f"final/{k}": float(summary[k]) for k in HPARAM_METRICS if summary.get(k) is not None}
    exp, session_start, session_end = hparams(hparams_of(cfg, overrides), metrics)
    for record in ([exp] if experiment else []) + [session_start, session_end]:
        writer.file_writer.add_summary(record)  # the writer's own event file (what add_hparams does in its sub-run)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, summary["steps"])


def _figure(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def run_report(summary: dict, out: Path, chat: bool, pinned: Sequence[str] = ("train/loss", "val/loss")) -> str:
    """The lines a finished run ends its console with: how it went, where its files are, what to run next."""
    run = shlex.quote(str(out))
    lines = [f"finished: {summary.get('steps')} steps in {_figure(summary.get('wall_s'), 1)} s of training "
             f"({_figure(summary.get('tokens_per_s'), 0)} tokens/s; {_figure(summary.get('total_s'), 1)} s in all)"]
    val = f"val loss {_figure(summary.get('val_loss'))}"
    if summary.get("val_bpb") is not None:
        val += f" ({_figure(summary['val_bpb'])} bits/byte)"
    if summary.get("val_loss_full") is not None:
        val += (f"; whole validation split {_figure(summary['val_loss_full'])} over "
                f"{summary.get('val_tokens_scored', 0):,} tokens")
        if summary.get("val_bpb_full") is not None:
            val += f" ({_figure(summary['val_bpb_full'])} bits/byte)"
    lines.append(val)
    baselines = [f"{name} {_figure(summary.get(key))}" for key, name in (
        ("bigram_loss", "bigram"), ("unigram_loss", "unigram"), ("entropy_floor", "entropy floor"))
        if summary.get(key) is not None]
    if baselines:
        closed = summary.get("gap_closed")
        lines.append("baselines: " + ", ".join(baselines)
                     + (f"; {100 * closed:.1f}% of the bigram-to-floor gap closed" if closed is not None else ""))
    run_dir = RunDir(out)
    plots = sorted(p.name for p in run_dir.plots.glob("*.png")) if run_dir.plots.is_dir() else []
    if plots:
        lines.append(f"plots: {run_dir.plots}/ ({', '.join(plots)})")
    lines.append(f"TensorBoard files: {run_dir.tensorboard}")
    prompt = " prompt=Hello" if chat else " prompt=The"
    lines += ["next:",
              f"  python -m llmlab.generate run={run}{prompt}    # sample from it",
              f"  python -m llmlab.chat run={run}    # a page to talk to it (the chat extra)",
              f"  tensorboard --logdir {run}    # its dashboards, then open",
              f"    {pinned_url(list(pinned))}",
              "    (the loss and what matters pinned first; the Custom Scalars tab has them all, grouped)"]
    return "\n".join(lines)
