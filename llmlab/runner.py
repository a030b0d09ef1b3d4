"""Run: the object one composed config becomes. It only orchestrates: seed, device, run directory, the stage's
parts, monitors, the Trainer with its Checkpointer and sinks, and the summary at the end. What each step means
lives with its owner: the stage (llmlab/stages/), the runtime checks (llmlab/run_checks.py), the run directory's
files (llmlab/rundir/), the loop (llmlab/train/trainer.py), checkpoints (llmlab/train/checkpointer.py), monitors
(llmlab/monitors/build.py), the summary (llmlab/train/summary.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from llmlab import run_checks
from llmlab.config.schema import RunConfig, TrainerConfig
from llmlab.data.batch import ShowFirstBatch
from llmlab.data.fingerprint import check_same_data
from llmlab.monitors.base import MonitorSet
from llmlab.monitors.build import MonitorSource, monitor_set
from llmlab.rundir import RunDir
from llmlab.sinks import MetricSinks
from llmlab.sinks.build import run_sinks
from llmlab.stages import StageContext, StageParts, get_stage
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed
from llmlab.train.bits_per_byte import bits_per_byte, split_bytes
from llmlab.train.checkpointer import Checkpointer, check_same_processes, resume_point
from llmlab.train.device import peak_memory_mb, pick_device
from llmlab.train.evaluators import Samples
from llmlab.train.run_dir import AlreadyCompleted, RunDirLock, check_run_dir, completed_summary
from llmlab.train.schedule import rewarmed
from llmlab.train.signals import Interrupted, StopRequested
from llmlab.train.split_eval import split_fingerprint, split_loss, write_windows
from llmlab.train.summary import final_summary, log_hparams, write_run_record
from llmlab.train.tb_layout import custom_scalars_layout, pinned_keys
from llmlab.train.threads import default_threads
from llmlab.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def last_logged(path: Path, key: str) -> float | None:
    """The last value of key in a metrics.jsonl, None if it holds none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get(key), int | float):
                return float(row[key])
    return None


def warn_if_rewarmed(run_dir: RunDir, step: int, trainer: TrainerConfig) -> None:
    """A warning line when a changed schedule lifts the learning rate of a resumed run (an extended wsd run whose
    decay had begun goes back to its peak); nothing when the saved config cannot be read (it was allowed to go)."""
    try:
        saved = OmegaConf.load(run_dir.config).get("trainer")
        before = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), saved))
    except Exception:  # noqa: BLE001  an unreadable or older config: nothing to compare with
        return
    if message := rewarmed(step, before, trainer):
        log.warning(f"warning: {message}")


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
        self.run_dir = RunDir(self.out_dir)
        self.stage = get_stage(cfg.stage.name)(cfg.stage)
        run_checks.before_build(cfg, self.device, self.place, self.stage)
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
        self.start_process()
        resume_from, manifest = self.claim_run_dir()
        parts = self.parts = self.build_parts(StageContext(self.cfg, self.device, self.place, self.out_dir,
                                                           resume_from))
        self.fingerprint_data(resume_from, manifest)
        run_checks.after_build(self.cfg, parts)  # the gate: the record, the logs and checkpoints come after it
        self.pinned = pinned_keys(parts.text_bytes is not None, self.stage.pinned)
        trainer = self.trainer(self.checkpointer(resume_from), parts.evaluators)
        if resume_from is not None:
            trainer.resume(resume_from)
        # from here on the run directory is written: the resume will proceed. A refused resume (an optimizer of
        # another shape, a state of another run) has left it as it was, its logs uncut
        # logs past the checkpoint are redone by this run; an attempt that never checkpointed is redone whole
        resume_step = manifest["step"] if manifest else (0 if self.run_dir.metrics_log.exists() else None)
        if self.place.is_main:  # rank 0 alone writes the record, logs, TensorBoard and monitors
            if manifest is not None and self.cfg.trainer.allow_config_change:
                warn_if_rewarmed(self.run_dir, manifest["step"], self.cfg.trainer)
            write_run_record(self.out_dir, self.cfg, parts.stats, parts.model, self.device, self.place)
            self.open_sinks(resume_step)
            trainer.sinks, trainer.monitors = self.sinks, self.monitors
        trainer.evaluators[:0] = self.samples(resume_step)  # the samples come first at each evaluation
        if resume_from is not None:
            if self.place.is_main:
                log.info(f"resumed from {resume_from} (step {trainer.state.step})")
        else:
            self.sinks.log_text(0, "config", OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
        return trainer

    def start_process(self) -> None:
        """The run directory, CPU threads, the seed and the clock."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.trainer.threads:
            torch.set_num_threads(self.cfg.trainer.threads)
        elif self.device.type == "cpu" and (chosen := default_threads()):
            torch.set_num_threads(chosen[0])
            if self.place.is_main:
                log.info(f"cpu threads: {chosen[0]} ({chosen[1]}; trainer.threads=<n> to choose)")
        torch.manual_seed(self.cfg.seed)
        self.start = time.perf_counter()

    def claim_run_dir(self) -> tuple[Path | None, dict | None]:
        """Lock the run directory (rank 0: one writer), find the checkpoint to resume and check it may be resumed
        under this config: (its path, its manifest), or (None, None). AlreadyCompleted when nothing is left."""
        cfg, place = self.cfg, self.place
        if place.is_main:  # held until this process ends: one writer per run directory
            self.lock = RunDirLock(self.out_dir)
            for surprise in cfg.surprises():
                log.warning(f"warning: {surprise}")
        resume_from = resume_point(self.run_dir.checkpoints, cfg.trainer.resume)
        manifest = ckpt.read_manifest(resume_from) if resume_from else None
        if manifest is not None:
            self.stage.check_resume(manifest, StageContext(cfg, self.device, place, self.out_dir, resume_from))
            check_same_processes(manifest, place.world_size, cfg.trainer.strategy, resume_from)
        if place.is_main:  # another config is refused, even for a finished run
            check_run_dir(self.out_dir, OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.trainer.resume,
                          cfg.trainer.allow_config_change, manifest)
        if cfg.trainer.resume == "auto" and (done := completed_summary(self.out_dir, manifest, cfg.trainer.max_steps)):
            raise AlreadyCompleted(done)  # every rank reads the same files
        return resume_from, manifest

    def build_parts(self, context: StageContext) -> StageParts:
        """The stage's parts; rank 0 builds first (it trains the tokenizer and fills the caches the others read)."""
        place = self.place
        if not place.is_main:
            distributed.barrier(place)
        parts = self.stage.build(context)
        if place.is_main:
            distributed.barrier(place)  # the caches are full: the other ranks may read them
        self.params = parts.model.num_params()
        self.active_params = parts.model.active_params() if parts.model.inactive_params() else None  # MoE
        return parts

    def fingerprint_data(self, resume_from: Path | None, manifest: dict | None) -> None:
        """Record what the run trains and validates on (dataset_stats.json and every checkpoint's manifest), and
        refuse to resume on other data unless trainer.allow_data_change."""
        cfg, parts = self.cfg, self.parts
        if parts.data_fingerprint is not None:
            if parts.val_split:  # the whole validation split's tokens, as val_windows.json and evaluate know them
                parts.data_fingerprint["val_split"] = split_fingerprint(parts.val_split, cfg.model.context_length)
            parts.stats = {**parts.stats, "data_fingerprint": parts.data_fingerprint}
            parts.manifest = {**parts.manifest, "data": parts.data_fingerprint}
        if manifest is not None and not cfg.trainer.allow_data_change:
            check_same_data(manifest.get("data"), parts.data_fingerprint, f"checkpoint {resume_from}",
                            "resume with trainer.allow_data_change=true")

    def open_sinks(self, resume_step: int | None) -> None:
        """metrics.jsonl, TensorBoard (with the layout its Custom Scalars tab opens on) and the monitors."""
        parts, run_dir = self.parts, self.run_dir
        self.sinks = run_sinks(self.cfg, run_dir, resume_step)
        self.monitors = monitor_set(self.cfg.monitors, MonitorSource(
            parts.model, parts.val_batches, self.out_dir, self.sinks.monitors, parts.decode, self.device,
            parts.steps_per_epoch, resume_step, parts.copy_probe, parts.modular_task))
        if self.sinks.tensorboard is not None:
            self.sinks.tensorboard.add_custom_scalars(custom_scalars_layout(
                parts.text_bytes is not None, self.stage.charts, [m.name for m in self.monitors.monitors],
                bool(parts.evaluators)))

    def checkpointer(self, resume_from: Path | None) -> Checkpointer:
        """The run's Checkpointer; a resumed run's weights go in before the model is wrapped, sharded or compiled."""
        cfg, model = self.cfg, self.parts.model
        checkpointer = Checkpointer(self.run_dir.checkpoints, self.place, cfg.trainer.strategy,
                                    cfg.trainer.keep_checkpoints,
                                    {"model": dataclasses.asdict(model.cfg), "stage": cfg.stage.name,
                                     "chat": self.stage.chat, **self.parts.manifest})
        if resume_from is not None:
            checkpointer.load_weights(resume_from, model)
        return checkpointer

    def samples(self, resume_step: int | None) -> list:
        """The periodic samples (samples.txt), evaluated before the stage's own evaluators."""
        parts = self.parts
        return [Samples(parts.sample, self.sinks, self.run_dir.samples, self.place, resume_step)] if parts.sample \
            else []

    def trainer(self, checkpointer: Checkpointer, evaluators: list) -> Trainer:
        cfg, parts, place = self.cfg, self.parts, self.place
        batches = parts.train_batches
        if cfg.trainer.debug_first_batch and place.is_main:
            batches = ShowFirstBatch(batches, parts.describe_batch)
        trained = distributed.prepare(parts.model, cfg.trainer, place, self.device, cfg.cache_dir)
        return Trainer(trained, parts.objective, batches, parts.val_batches, cfg.trainer, place, self.sinks,
                       checkpointer, evaluators, self.monitors, parts.text_bytes, parts.val_objective)

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
            final_summary(result, {}, float("inf"), peak_mem_mb=peak_memory_mb(self.device), total_s=0.0
                          ).write(self.run_dir.summary)
        return result

    def train(self, trainer: Trainer, stop: StopRequested) -> TrainResult:
        try:
            result = trainer.fit(stop)
            if result.train_loss is None:  # resumed at its last step (to score the split): nothing trained here
                result = dataclasses.replace(result, train_loss=last_logged(self.run_dir.metrics_log,
                                                                            "train/loss"))
            if result.status == "completed":
                result = self.score_split_or_stop(trainer, result, stop)
        except Exception as exc:  # leave a record a sweep report can show, then let it propagate
            state = trainer.state
            result = TrainResult("failed", state.step, state.tokens_seen, trainer.last_train_loss,
                                 trainer.last_val_loss, state.wall_s, 0.0, f"{type(exc).__name__}: {exc}")
            self.finish(trainer, result)
            raise
        self.finish(trainer, result)
        return result

    def score_split_or_stop(self, trainer: Trainer, result: TrainResult, stop: StopRequested) -> TrainResult:
        """Score the whole split, unless a signal comes first: one process stops within the batch it is on (a long
        split outlasts a scheduler's grace period), and the run is interrupted, its last checkpoint written, so
        the same command scores it. Ranks of torchrun finish the scoring together (collectives), as evaluations."""
        try:
            with stop.at_once(not self.place.enabled):
                self.split = self.score_split(trainer)
        except Interrupted as signal_name:
            self.split = {}
            return dataclasses.replace(result, status="interrupted", message=(
                f"{signal_name} while scoring the whole validation split after step {result.steps} (the last step; "
                "its checkpoint is written); the same command scores it"))
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
            record["val_windows_sha256"] = write_windows(self.out_dir, result, f"step_{trainer.state.step}",
                                                         self.parts.data_fingerprint)
            self.sinks.log_summary(trainer.state.step, {"val/loss_full": result.loss, **(
                {"val/bpb_full": record["val_bpb_full"]} if record.get("val_bpb_full") is not None else {})})
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
            summary = final_summary(
                result, self.parts.stats, trainer.state.best_val_loss, params=self.params,
                total_s=time.perf_counter() - self.start, peak_mem_mb=peak_memory_mb(self.device),
                skipped_steps=trainer.state.skipped_steps, val_bpb=trainer.last_val_bpb, **self.split,
                flops_per_token=trainer.flops_per_token, train_flops=result.tokens_seen * trainer.flops_per_token,
                monitors=monitor_summary, active_params=self.active_params).write(self.run_dir.summary)
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
                log.warning(f"warning: plots/{name}.png not written: {type(exc).__name__}: {exc}")
        return summary
