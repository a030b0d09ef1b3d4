"""Run: the object one composed config becomes. It only orchestrates: seed, device, run directory, the stage's
parts, monitors, the Trainer with its Checkpointer and sinks, and the summary at the end. What each step means
lives with its owner: the stage (llmlab/stages/), the loop (llmlab/train/trainer.py), checkpoints
(llmlab/train/checkpointer.py), monitors (llmlab/monitors/build.py), the summary (llmlab/train/summary.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from llmlab.config.errors import ConfigError
from llmlab.config.schema import RunConfig
from llmlab.data.batch import ShowFirstBatch
from llmlab.monitors.base import MonitorSet
from llmlab.monitors.build import build_monitors, monitor_set
from llmlab.plots import write_training_curves
from llmlab.stages import StageContext, StageParts, get_stage
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed
from llmlab.train.checkpointer import Checkpointer, check_same_processes, resume_point
from llmlab.train.device import peak_memory_mb, pick_device
from llmlab.train.evaluators import Samples
from llmlab.train.run_dir import check_run_dir
from llmlab.train.sinks import JsonlSink, MetricSinks, TensorBoardSink
from llmlab.train.summary import log_hparams, write_summary
from llmlab.train.trainer import Trainer, TrainResult


class Run:
    def __init__(self, cfg: RunConfig):
        if cfg.model.path:  # model=hf: the architecture is the imported model's, known before anything runs
            from llmlab.interop.hf_import import resolve_model_config

            cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))
        device = pick_device(cfg.device)
        self.place = distributed.init(device)  # one process, or one rank of a torchrun / SLURM job
        self.device = distributed.local_device(device, self.place)
        if self.place.enabled:  # every rank writes into rank 0's directory (Hydra resolved one per rank)
            shared = distributed.broadcast_object(cfg.out_dir, self.place)
            if shared != cfg.out_dir:
                with contextlib.suppress(OSError):  # this rank's own directory, if Hydra made it and it is empty
                    Path(cfg.out_dir).rmdir()
                cfg = dataclasses.replace(cfg, out_dir=shared)
        self.cfg, self.out_dir = cfg, Path(cfg.out_dir)
        self.stage = get_stage(cfg.stage.name)(cfg.stage)
        self.sinks, self.monitors = MetricSinks([]), MonitorSet([])

    def setup(self) -> Trainer:
        """Everything up to the first step: the stage's parts, sinks, monitors, the trainer (resumed if a
        checkpoint is there)."""
        cfg, out, place = self.cfg, self.out_dir, self.place
        out.mkdir(parents=True, exist_ok=True)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        torch.manual_seed(cfg.seed)
        self.start = time.perf_counter()

        resume_from = resume_point(out / "checkpoints", cfg.trainer.resume)
        context = StageContext(cfg, self.device, place, out, resume_from)
        manifest = ckpt.read_manifest(resume_from) if resume_from else None
        if manifest is not None:
            self.stage.check_resume(manifest, context)
            check_same_processes(manifest, place.world_size, cfg.trainer.strategy, resume_from)
        if place.enabled and cfg.trainer.strategy == "fsdp" and build_monitors(cfg.monitors):
            raise ConfigError("trainer.strategy=fsdp shards the weights, so no rank sees them whole for the "
                              "monitors: use monitors=none, or trainer.strategy=ddp")
        if place.is_main:
            check_run_dir(out, OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.trainer.resume,
                          cfg.trainer.allow_config_change)
        else:
            distributed.barrier(place)  # rank 0 trains the tokenizer and fills the caches first
        parts = self.parts = self.stage.build(context)
        if place.is_main:
            distributed.barrier(place)  # the caches are full: the other ranks may read them
        model = parts.model
        self.params = model.num_params()
        if place.is_main:
            self.write_run_record(parts)
        # logs past the checkpoint are redone by this run; an attempt that never checkpointed is redone whole
        resume_step = manifest["step"] if manifest else (0 if (out / "metrics.jsonl").exists() else None)
        if place.is_main:  # rank 0 alone writes logs, TensorBoard and monitors
            self.sinks = MetricSinks([JsonlSink(out / "metrics.jsonl", resume_step),
                                      TensorBoardSink(out / "tb", resume_step)])
            self.monitors = monitor_set(cfg.monitors, model, model.cfg.n_layers, parts.val_batches, out,
                                        self.sinks.tensorboard, parts.decode, self.device, parts.steps_per_epoch,
                                        resume_step)
        checkpointer = Checkpointer(out / "checkpoints", place, cfg.trainer.strategy, cfg.trainer.keep_checkpoints,
                                    {"model": dataclasses.asdict(model.cfg), "stage": cfg.stage.name,
                                     "chat": self.stage.chat, **parts.manifest})
        if resume_from is not None:  # the weights go in before the model is wrapped, sharded or compiled
            checkpointer.load_weights(resume_from, model)
        batches = parts.train_batches
        if cfg.trainer.debug_first_batch and place.is_main:
            batches = ShowFirstBatch(batches, parts.describe_batch)
        evaluators = [Samples(parts.sample, self.sinks, out / "samples.txt", place, resume_step)] if parts.sample \
            else []
        trainer = Trainer(self.prepare_model(model), parts.objective, batches, parts.val_batches, cfg.trainer, place,
                          self.sinks, checkpointer, [*evaluators, *parts.evaluators], self.monitors)
        if resume_from is not None:
            trainer.resume(resume_from)
            if place.is_main:
                print(f"resumed from {resume_from} (step {trainer.state.step})")
        else:
            self.sinks.log_text(0, "config", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return trainer

    def write_run_record(self, parts: StageParts) -> None:
        """dataset_stats.json, config_resolved.yaml and the model's size, before the first step."""
        out, place = self.out_dir, self.place
        (out / "dataset_stats.json").write_text(json.dumps(parts.stats, indent=2))
        (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
        ranks = f" x {place.world_size} processes ({self.cfg.trainer.strategy})" if place.enabled else ""
        body = parts.model.num_params(include_embeddings=False)
        print(f"model: {self.params:,} parameters ({body:,} without embeddings) on {self.device}{ranks}")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """What trains: the model with activation checkpointing, DDP-wrapped or sharded under torchrun, then
        compiled. Checkpoints, samples and monitors use the model itself, so no compile or DDP prefix reaches a
        checkpoint and generation (new shapes at every token) never triggers a recompile."""
        trainer = self.cfg.trainer
        model.activation_checkpointing = trainer.activation_checkpointing
        trained = distributed.wrap(model, trainer.strategy, self.place, self.device)
        return torch.compile(trained) if trainer.compile else trained

    def execute(self) -> TrainResult:
        trainer = self.setup()
        try:
            result = trainer.fit()
        except Exception as exc:  # leave a record a sweep report can show, then let it propagate
            state = trainer.state
            result = TrainResult("failed", state.step, state.tokens_seen, trainer.last_train_loss,
                                 trainer.last_val_loss, state.wall_s, 0.0, f"{type(exc).__name__}: {exc}")
            self.finish(trainer, result)
            raise
        self.finish(trainer, result)
        return result

    def close(self) -> dict:
        """Flush the monitors, then close the sinks, writing no summary (benchmarks stop runs this way)."""
        try:
            return self.monitors.close()
        finally:
            self.sinks.close()

    def finish(self, trainer: Trainer, result: TrainResult) -> dict:
        """Flush monitors (their figures need the writer), write metrics.json and the HParams record, close sinks."""
        if not self.place.is_main:
            return {}
        try:
            monitor_summary = self.monitors.close()
            summary = write_summary(self.out_dir, result, self.params, self.parts.stats, peak_memory_mb(self.device),
                                    time.perf_counter() - self.start, trainer.state.best_val_loss,
                                    {"skipped_steps": trainer.state.skipped_steps, "monitors": monitor_summary})
            if self.sinks.tensorboard is not None:
                log_hparams(self.sinks.tensorboard, self.cfg, summary)
        finally:
            self.sinks.close()
        try:  # after the sinks flushed metrics.jsonl; a figure that fails must not fail the run
            write_training_curves(self.out_dir)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: plots/training_curves.png not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return summary
