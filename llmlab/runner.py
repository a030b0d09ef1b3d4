"""Run: the object one composed config becomes. It only orchestrates: seed, device, run directory, the stage's
parts, monitors, the Trainer with its Checkpointer and sinks, and the summary at the end. What each step means
lives with its owner: the stage (llmlab/stages/), the loop (llmlab/train/trainer.py), checkpoints
(llmlab/train/checkpointer.py), monitors (llmlab/monitors/build.py), the summary (llmlab/train/summary.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from llmlab.stages import StageContext, get_stage
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed
from llmlab.train.bits_per_byte import bits_per_byte, split_bytes
from llmlab.train.checkpointer import Checkpointer, check_same_processes, resume_point
from llmlab.train.device import peak_memory_mb, pick_device
from llmlab.train.evaluators import Samples
from llmlab.train.run_dir import AlreadyCompleted, RunDirLock, check_run_dir, completed_summary
from llmlab.train.signals import Interrupted, StopRequested
from llmlab.train.sinks import JsonlSink, MetricSinks, TensorBoardSink
from llmlab.train.split_eval import split_loss, write_windows
from llmlab.train.summary import log_hparams, write_run_record, write_summary
from llmlab.train.tb_layout import custom_scalars_layout, pinned_keys
from llmlab.train.threads import default_threads
from llmlab.train.trainer import Trainer, TrainResult


class Run:
    def __init__(self, cfg: RunConfig):
        if cfg.model.path:  # model=hf: the architecture is the imported model's, known before anything runs
            from llmlab.interop.hf_import import resolve_model_config

            cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))
        device = pick_device(cfg.device)
        if cfg.trainer.precision == "fp16" and device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16 needs CUDA and this run is on {device.type}; "
                              "use fp32 or bf16")
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
        self.lock: RunDirLock | None = None
        self.split: dict = {}  # the whole validation split's loss, once a run completed (score_split)
        self.summary: dict = {}  # metrics.json as written by finish()
        self.pinned: list[str] = []  # the curves TensorBoard's link pins first (llmlab.train.tb_layout)
        # set by the command line: its overrides (HParams names what a sweep varies by them) and whether this run is
        # one job of a multirun (whose sweep report writes the HParams experiment for all jobs)
        self.overrides: list[str] = []
        self.sweep_job = False

    def setup(self) -> Trainer:
        """Everything up to the first step: the stage's parts, sinks, monitors, the trainer (resumed if a
        checkpoint is there). The run directory stays locked until finish() or close()."""
        try:
            return self._setup()
        except BaseException:
            self.release()
            raise

    def _setup(self) -> Trainer:
        cfg, out, place = self.cfg, self.out_dir, self.place
        out.mkdir(parents=True, exist_ok=True)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        elif self.device.type == "cpu" and (chosen := default_threads()):
            torch.set_num_threads(chosen[0])
            if place.is_main:
                print(f"cpu threads: {chosen[0]} ({chosen[1]}; trainer.threads=<n> to choose)")
        torch.manual_seed(cfg.seed)
        self.start = time.perf_counter()

        if place.is_main:  # held until this process ends: one writer per run directory
            self.lock = RunDirLock(out)
            for surprise in cfg.surprises():
                print(f"warning: {surprise}", file=sys.stderr)
        resume_from = resume_point(out / "checkpoints", cfg.trainer.resume)
        context = StageContext(cfg, self.device, place, out, resume_from)
        manifest = ckpt.read_manifest(resume_from) if resume_from else None
        if manifest is not None:
            self.stage.check_resume(manifest, context)
            check_same_processes(manifest, place.world_size, cfg.trainer.strategy, resume_from)
        if place.enabled and cfg.trainer.strategy == "fsdp" and build_monitors(cfg.monitors):
            raise ConfigError("trainer.strategy=fsdp shards the weights, so no rank sees them whole for the "
                              "monitors: use monitors=none, or trainer.strategy=ddp")
        if place.is_main:  # another config is refused, even for a finished run
            check_run_dir(out, OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.trainer.resume,
                          cfg.trainer.allow_config_change, manifest)
        if cfg.trainer.resume == "auto" and (done := completed_summary(out, manifest, cfg.trainer.max_steps)):
            raise AlreadyCompleted(done)  # every rank reads the same files
        if not place.is_main:
            distributed.barrier(place)  # rank 0 trains the tokenizer and fills the caches first
        parts = self.parts = self.stage.build(context)
        if place.is_main:
            distributed.barrier(place)  # the caches are full: the other ranks may read them
        model = parts.model
        self.params = model.num_params()
        self.active_params = model.active_params() if model.inactive_params() else None  # MoE: what a token uses
        if place.is_main:
            write_run_record(out, cfg, parts.stats, model, self.device, place)
        # logs past the checkpoint are redone by this run; an attempt that never checkpointed is redone whole
        resume_step = manifest["step"] if manifest else (0 if (out / "metrics.jsonl").exists() else None)
        if place.is_main:  # rank 0 alone writes logs, TensorBoard and monitors
            self.sinks = MetricSinks([JsonlSink(out / "metrics.jsonl", resume_step),
                                      TensorBoardSink(out / "tb", resume_step)])
            self.monitors = monitor_set(cfg.monitors, model, model.cfg.n_layers, parts.val_batches, out,
                                        self.sinks.tensorboard, parts.decode, self.device, parts.steps_per_epoch,
                                        resume_step, parts.copy_probe, parts.modular_task)
        self.pinned = pinned_keys(parts.text_bytes is not None, self.stage.pinned)
        if self.sinks.tensorboard is not None:  # what TensorBoard's Custom Scalars tab opens on
            self.sinks.tensorboard.add_custom_scalars(custom_scalars_layout(
                parts.text_bytes is not None, self.stage.charts, [m.name for m in self.monitors.monitors],
                bool(parts.evaluators)))
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
        trained = distributed.prepare(model, cfg.trainer, place, self.device, cfg.cache_dir)
        trainer = Trainer(trained, parts.objective, batches, parts.val_batches, cfg.trainer, place,
                          self.sinks, checkpointer, [*evaluators, *parts.evaluators], self.monitors, parts.text_bytes,
                          parts.val_objective)
        if resume_from is not None:
            trainer.resume(resume_from)
            if place.is_main:
                print(f"resumed from {resume_from} (step {trainer.state.step})")
        else:
            self.sinks.log_text(0, "config", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return trainer

    def execute(self) -> TrainResult:
        stop = StopRequested()
        with stop:
            try:
                with stop.at_once():  # a signal while setting up stops at once: nothing is trained or saved yet
                    trainer = self.setup()
            except Interrupted as signal_name:
                return self.interrupted_in_setup(str(signal_name))
            trainer.timings.add("startup", time.perf_counter() - self.start)  # imports aside: they come before
            return self.train(trainer, stop)

    def interrupted_in_setup(self, signal_name: str) -> TrainResult:
        result = TrainResult("interrupted", 0, 0, None, None, 0.0, 0.0,
                             f"{signal_name} while setting up, before step 1; no checkpoint was written")
        if self.place.is_main:
            write_summary(self.out_dir, result, None, {}, peak_memory_mb(self.device), 0.0, float("inf"))
        return result

    def train(self, trainer: Trainer, stop: StopRequested) -> TrainResult:
        try:
            result = trainer.fit(stop)
            self.split = self.score_split(trainer) if result.status == "completed" else {}
        except Exception as exc:  # leave a record a sweep report can show, then let it propagate
            state = trainer.state
            result = TrainResult("failed", state.step, state.tokens_seen, trainer.last_train_loss,
                                 trainer.last_val_loss, state.wall_s, 0.0, f"{type(exc).__name__}: {exc}")
            self.finish(trainer, result)
            raise
        self.finish(trainer, result)
        return result

    def score_split(self, trainer: Trainer) -> dict:
        """The final model's loss over every validation token (every rank takes part: a sharded forward needs
        them all); rank 0 keeps the per-window sums beside metrics.json. {} when the stage has no such split."""
        streams = self.parts.val_split
        if not streams:
            return {}
        batch = self.cfg.trainer.batch_size * self.place.world_size
        result = split_loss(trainer.model, streams, self.parts.model.cfg.context_length, batch, self.device,
                            trainer.autocast)
        record = {"val_loss_full": result.loss, "val_tokens_scored": result.tokens}
        if self.parts.text_bytes is not None:
            record["val_bytes_scored"] = split_bytes(streams, self.parts.text_bytes)
            record["val_bpb_full"] = bits_per_byte(float(result.sums.sum()), record["val_bytes_scored"])
        if self.place.is_main:
            record["val_windows_sha256"] = write_windows(self.out_dir, result, f"step_{trainer.state.step}")
            if self.sinks.tensorboard is not None:
                self.sinks.tensorboard.add_scalar("val/loss_full", result.loss, trainer.state.step)
                if record.get("val_bpb_full") is not None:
                    self.sinks.tensorboard.add_scalar("val/bpb_full", record["val_bpb_full"], trainer.state.step)
        return record

    def close(self) -> dict:
        """Flush the monitors, then close the sinks, writing no summary (benchmarks stop runs this way)."""
        try:
            return self.monitors.close()
        finally:
            self.sinks.close()
            self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def finish(self, trainer: Trainer, result: TrainResult) -> dict:
        """Flush monitors (their figures need the writer), write metrics.json and the HParams record, close sinks."""
        if not self.place.is_main:
            return {}
        try:
            monitor_summary = self.monitors.close(progress=self.cfg.trainer.progress)
            summary = write_summary(self.out_dir, result, self.params, self.parts.stats, peak_memory_mb(self.device),
                                    time.perf_counter() - self.start, trainer.state.best_val_loss,
                                    {"skipped_steps": trainer.state.skipped_steps, "val_bpb": trainer.last_val_bpb,
                                     **self.split,
                                     "flops_per_token": trainer.flops_per_token,
                                     "train_flops": result.tokens_seen * trainer.flops_per_token,
                                     "monitors": monitor_summary,
                                     **({"active_params": self.active_params} if self.active_params else {})})
            if self.sinks.tensorboard is not None:
                log_hparams(self.sinks.tensorboard, self.cfg, summary, self.overrides, experiment=not self.sweep_job)
            self.summary = summary
        finally:
            self.sinks.close()
            self.release()
        from llmlab.grokking_plots import write_grokking_plot  # matplotlib: only now, to draw
        from llmlab.plots import write_circuits_plot, write_training_curves

        for name, draw in (("training_curves", write_training_curves), ("circuits", write_circuits_plot),
                           ("grokking", write_grokking_plot)):
            try:  # after the sinks flushed metrics.jsonl; a figure that fails must not fail the run
                draw(self.out_dir)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: plots/{name}.png not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return summary
