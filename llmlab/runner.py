"""Run: the object one composed config becomes. It owns the output directory, device, seed and the
single set of metric sinks, and builds tokenizer -> data -> model -> objective -> trainer in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, RunConfig
from llmlab.data.dataset import TrainBatches, cached_token_stream, validation_batches
from llmlab.data.sources import load_corpus
from llmlab.data.stats import bigram_loss, entropy_floor, unigram_loss
from llmlab.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from llmlab.model.generation import SamplingConfig, generate
from llmlab.model.transformer import Transformer
from llmlab.monitors.attention import select_layers
from llmlab.monitors.base import AlertLog, MonitorContext, MonitorSet
from llmlab.monitors.build import build_monitors
from llmlab.monitors.pool import FigurePool
from llmlab.monitors.worker import BackgroundWorker
from llmlab.plots import write_training_curves
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed
from llmlab.train.logfiles import truncate_samples
from llmlab.train.objectives import build_objective
from llmlab.train.optim import build_optimizer
from llmlab.train.run_dir import check_run_dir
from llmlab.train.sinks import JsonlSink, MetricSinks, TensorBoardSink
from llmlab.train.trainer import Trainer, TrainResult


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train_tokens: np.ndarray | None  # token streams: text stages only
    val_tokens: np.ndarray | None
    stats: dict


@dataclass
class StageParts:
    """What a stage trains on and with; the rest of a run (sinks, monitors, trainer) is the same for every stage."""

    model: Transformer
    data: PreparedData
    train_batches: object  # .next() -> batch, state_dict(), load_state_dict()
    val_batches: list
    objective: object
    sample_fn: Callable[[int], str] | None
    steps_per_epoch: float
    eval_fn: Callable[[int], dict[str, float]] | None = None
    describe_batch: Callable[[dict], str] | None = None
    decode_ids: Callable[[list[int]], str] | None = None  # None: the tokenizer's decode
    base: str | None = None  # chat stages: the checkpoint (or hf:<path>) they start from


def tokenizer_fingerprint(directory: Path) -> str:
    return "-".join(ckpt.sha256_file(p)[:16] for p in sorted(directory.rglob("*")) if p.is_file())


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
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)

    # ---- parts -----------------------------------------------------------------------------
    def resume_checkpoint(self) -> Path | None:
        """The verified checkpoint to resume from: resume=auto walks back past corrupt ones and says so."""
        resume = self.cfg.trainer.resume
        if resume == "never":
            return None
        if resume == "auto":
            found, skipped = ckpt.newest_intact(self.out_dir / "checkpoints")
            for reason in skipped:
                print(f"warning: {reason}; falling back to an earlier checkpoint", file=sys.stderr)
            return found
        found = ckpt.find_checkpoint(Path(resume))
        if found is None:
            raise ConfigError(f"trainer.resume={resume}: no complete checkpoint found there")
        ckpt.verify_checkpoint(found)  # an explicit choice is never swapped for another: a bad one stops the run
        return found

    def prepare_data(self, tokenizer_dir: Path | None) -> PreparedData:
        """Corpus -> tokenizer (trained once, or the one a resumed run already uses) -> token streams."""
        corpus = load_corpus(self.cfg.data)
        run_tokenizer_dir = self.out_dir / "tokenizer"
        if tokenizer_dir is not None:
            tokenizer, cached = load_tokenizer(tokenizer_dir), True
        elif self.cfg.model.path:  # an imported model brings its own tokenizer
            from llmlab.interop.hf_import import PretrainedTokenizer

            tokenizer, cached = PretrainedTokenizer.from_model_dir(self.cfg.model), False
        else:
            tokenizer, cached = build_tokenizer(self.cfg.tokenizer, "\n".join(corpus.train_docs))
        if tokenizer_dir != run_tokenizer_dir and self.place.is_main:
            tokenizer.save(run_tokenizer_dir)
        key = tokenizer_fingerprint(run_tokenizer_dir)
        streams = Path(self.cfg.cache_dir) / "tokens"
        train = cached_token_stream(tokenizer, key, corpus.train_docs, streams)
        val = cached_token_stream(tokenizer, key, corpus.val_docs, streams)
        floor = entropy_floor(corpus.val_logprob, len(val))
        stats = {
            "sources": [
                {"name": s.name, "train_documents": len(s.train_docs), "val_documents": len(s.val_docs),
                 "train_characters": sum(map(len, s.train_docs)), "val_characters": sum(map(len, s.val_docs))}
                for s in corpus.sources
            ],
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "from_cache": cached},
            "train_tokens": len(train),
            "val_tokens": len(val),
            "unigram_loss": unigram_loss(train, val, tokenizer.vocab_size),
            "bigram_loss": bigram_loss(train, val, tokenizer.vocab_size),
            "entropy_floor": floor,
        }
        return PreparedData(tokenizer, train, val, stats)

    def build_model(self, vocab_size: int, pretrained: bool = True) -> Transformer:
        """A new model for the tokenizer's vocabulary; model=hf: the imported one (its weights unless resuming)."""
        if not self.cfg.model.path:
            return Transformer(dataclasses.replace(self.cfg.model, vocab_size=vocab_size)).to(self.device)
        if vocab_size > self.cfg.model.vocab_size:
            raise ConfigError(f"model.path={self.cfg.model.path}: its tokenizer has {vocab_size} ids but the model "
                              f"only {self.cfg.model.vocab_size} embeddings")
        model = Transformer.uninitialized(self.cfg.model)  # every weight is loaded: from path or the checkpoint
        if pretrained:
            from llmlab.interop.hf_import import load_pretrained_weights

            load_pretrained_weights(model, self.cfg.model)
        return model.to(self.device)

    def sampler(self, model: Transformer, tokenizer: Tokenizer):
        cfg = self.cfg.trainer
        prompt = [tokenizer.bos_id, *tokenizer.encode(cfg.sample_prompt)]
        sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50)

        def sample(step: int) -> str:
            gen = torch.Generator(self.device).manual_seed(self.cfg.seed + step)  # leaves the global RNG alone
            ids = generate(model, torch.tensor([prompt], device=self.device), sampling, gen)[0].tolist()
            return decode_documents(tokenizer, ids)

        return sample

    def build_monitor_set(self, model: Transformer, decode_ids: Callable[[list[int]], str], val_batches, writer,
                          resume_step: int | None, steps_per_epoch: float) -> MonitorSet:
        cfg = self.cfg.monitors
        monitors = build_monitors(cfg)
        if not monitors:
            return MonitorSet([])
        # layer indices are checked here, before training, so a typo is a config error, not a disabled monitor
        for node in ("attention", "distribution"):
            select_layers(getattr(cfg, node).layers, model.cfg.n_layers, f"monitors.{node}.layers")
        batch_idx = cfg.attention.batch_idx
        if batch_idx >= len(val_batches):
            raise ConfigError(f"monitors.attention.batch_idx={batch_idx}: only {len(val_batches)} validation "
                              "batches (trainer.eval_batches)")
        # one fixed probe for every monitor that looks inside a forward (attention maps, dead units)
        first = val_batches[batch_idx]
        ids = first["input_ids"] if isinstance(first, dict) else first[0]
        probe = ids[: cfg.attention.probe_sequences, : cfg.attention.probe_tokens]
        ctx = MonitorContext(
            model=model, out_dir=self.out_dir / "monitors", writer=writer,
            worker=BackgroundWorker(cfg.max_workers, cfg.max_pending),
            alerts=AlertLog(self.out_dir / "alerts.jsonl", writer),
            figures=FigurePool(cfg.max_workers),
            probe=probe.to(self.device),
            decode_token=lambda t: decode_ids([t]),
            steps_per_epoch=steps_per_epoch, resume_step=resume_step,
        )
        return MonitorSet(monitors, ctx)

    def pretrain_parts(self, resume_from: Path | None) -> StageParts:
        """Text -> tokenizer (trained once, or the one a resumed run already uses) -> token windows."""
        cfg = self.cfg
        tokenizer_dir = resume_from.parent.parent / "tokenizer" if resume_from else None
        data = self.prepare_data(tokenizer_dir if tokenizer_dir and tokenizer_dir.is_dir() else None)
        model = self.build_model(data.tokenizer.vocab_size, pretrained=resume_from is None)
        seq_len, trainer = cfg.model.context_length, cfg.trainer
        train_batches = TrainBatches(data.train_tokens, trainer.batch_size, seq_len, seed=cfg.seed,
                                     rank=self.place.rank, world_size=self.place.world_size)
        # every rank evaluates the whole validation set, batched as one process with the global batch would
        val_batches = validation_batches(data.val_tokens, trainer.batch_size * self.place.world_size, seq_len,
                                         trainer.eval_batches)
        tokens_per_step = trainer.batch_size * self.place.world_size * trainer.grad_accum_steps * seq_len
        return StageParts(model, data, train_batches, val_batches, build_objective(cfg.stage),
                          self.sampler(model, data.tokenizer), len(data.train_tokens) / tokens_per_step)

    def chat_parts(self) -> StageParts:
        """sft / dpo: the starting model and tokenizer (stage.init_from or model=hf), encoded conversations or
        pairs; a resumed run builds the same and then loads its own checkpoint over it."""
        from llmlab.train.chat_stage import build_chat_stage

        stage = build_chat_stage(self.cfg, self.device, self.place)
        # load_trained finds the run's tokenizer here
        if self.place.is_main and not (self.out_dir / "tokenizer").is_dir():
            stage.tokenizer.save(self.out_dir / "tokenizer")
        data = PreparedData(stage.tokenizer, None, None, stage.stats)
        per_epoch = stage.train_batches.batches_per_epoch / self.cfg.trainer.grad_accum_steps
        return StageParts(stage.model, data, stage.train_batches, stage.val_batches, stage.objective,
                          stage.sample_fn, per_epoch, stage.eval_fn, stage.describe_batch, stage.template.render,
                          stage.base)

    # ---- the run ---------------------------------------------------------------------------
    def setup(self) -> Trainer:
        """Everything up to the first step: data, model, sinks, monitors, trainer (resumed if there is a checkpoint)."""
        cfg, out, place = self.cfg, self.out_dir, self.place
        out.mkdir(parents=True, exist_ok=True)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        torch.manual_seed(cfg.seed)
        self.start = time.perf_counter()

        resume_from = self.resume_checkpoint()
        manifest = ckpt.read_manifest(resume_from) if resume_from else None
        if manifest is not None and cfg.stage.name == "pretrain":  # chat stages check against init_from instead
            check_same_architecture(manifest, cfg.model, resume_from)
        if manifest is not None:
            check_same_processes(manifest, place.world_size, cfg.trainer.strategy, resume_from)
        if place.enabled and cfg.trainer.strategy == "fsdp" and build_monitors(cfg.monitors):
            raise ConfigError("trainer.strategy=fsdp shards the weights, so no rank sees them whole for the "
                              "monitors: use monitors=none, or trainer.strategy=ddp")
        if place.is_main:
            check_run_dir(out, OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.trainer.resume,
                          cfg.trainer.allow_config_change)
        else:
            distributed.barrier(place)  # rank 0 trains the tokenizer and fills the caches first
        if cfg.stage.name == "pretrain":
            parts = self.pretrain_parts(resume_from)
        else:
            parts = self.chat_parts()
        if place.is_main:
            distributed.barrier(place)  # the caches are full: the other ranks may read them
        model, self.data = parts.model, parts.data
        self.params, params_body = model.num_params(), model.num_params(include_embeddings=False)
        if place.is_main:
            (out / "dataset_stats.json").write_text(json.dumps(self.data.stats, indent=2))
            (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            ranks = f" x {place.world_size} processes ({cfg.trainer.strategy})" if place.enabled else ""
            print(f"model: {self.params:,} parameters ({params_body:,} without embeddings) on {self.device}{ranks}")
        train_batches, val_batches = parts.train_batches, parts.val_batches
        # logs past the checkpoint are redone by this run; an attempt that never checkpointed is redone whole
        resume_step = manifest["step"] if manifest else (0 if (out / "metrics.jsonl").exists() else None)
        if place.is_main:
            if resume_step is not None:
                truncate_samples(out / "samples.txt", resume_step)
            self.sinks = MetricSinks([JsonlSink(out / "metrics.jsonl", resume_step),
                                      TensorBoardSink(out / "tb", resume_step)])
            self.monitors = self.build_monitor_set(model, parts.decode_ids or self.data.tokenizer.decode,
                                                   val_batches, self.sinks.tensorboard, resume_step,
                                                   parts.steps_per_epoch)
        else:  # rank 0 alone writes logs, TensorBoard and monitors
            self.sinks, self.monitors = MetricSinks([]), MonitorSet([])
        flops_per_token = model.flops_per_token()
        if resume_from is not None and place.enabled:  # weights go in before the model is copied or sharded
            ckpt.load_weights(resume_from, model)
        trained = self.prepare_model(model)
        trainer = Trainer(
            trained, parts.objective, build_optimizer(trained, cfg.trainer, self.device),
            train_batches, val_batches, cfg.trainer, self.sinks, out, self.device,
            flops_per_token=flops_per_token, sample_fn=parts.sample_fn,
            checkpoint_meta={"model": dataclasses.asdict(model.cfg), "stage": cfg.stage.name, "base": parts.base,
                             "processes": place.world_size, "strategy": cfg.trainer.strategy},
            monitors=self.monitors, eval_fn=parts.eval_fn, describe_batch=parts.describe_batch,
            place=place, strategy=cfg.trainer.strategy,
        )
        if resume_from is not None:
            trainer.resume_from(resume_from)
            if place.is_main:
                print(f"resumed from {resume_from} (step {trainer.state.step})")
        else:
            self.sinks.log_text(0, "config", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return trainer

    def prepare_model(self, model: Transformer) -> torch.nn.Module:
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
            summary = write_summary(self.out_dir, result, self.params, self.data.stats,
                                    peak_memory_mb(self.device), time.perf_counter() - self.start,
                                    trainer.state.best_val_loss,
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


def decode_documents(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text with one line per document (eos tokens become line breaks)."""
    docs, current = [], []
    for i in ids:
        if i == tokenizer.eos_id:
            docs.append(current)
            current = []
        else:
            current.append(i)
    docs.append(current)
    return "\n".join(tokenizer.decode(d) for d in docs if d)


def check_same_architecture(manifest: dict, model_cfg: ModelConfig, path: Path) -> None:
    saved = manifest.get("model", {})
    current = dataclasses.asdict(model_cfg)
    differing = [k for k in current if k != "vocab_size" and k in saved and saved[k] != current[k]]
    if differing:
        pairs = ", ".join(f"model.{k}: checkpoint {saved[k]!r} vs config {current[k]!r}" for k in differing)
        raise ConfigError(f"checkpoint {path} has another architecture ({pairs}); "
                          "use a new hydra.run.dir or trainer.resume=never")


def check_same_processes(manifest: dict, world_size: int, strategy: str, path: Path) -> None:
    """A run resumes with the processes it was written by: they set its global batch and data order."""
    saved_world, saved_strategy = manifest.get("processes", 1), manifest.get("strategy", "ddp")
    if saved_world != world_size or (world_size > 1 and saved_strategy != strategy):
        raise ConfigError(f"checkpoint {path} was written by {saved_world} process(es) with "
                          f"trainer.strategy={saved_strategy}; this run has {world_size} with {strategy}: resume "
                          f"with torchrun --nproc_per_node={saved_world}, or start a new hydra.run.dir")


def write_summary(out: Path, result: TrainResult, params: int, stats: dict, peak_mb: float,
                  total_s: float, best_val: float, extra: dict | None = None) -> dict:
    floor, bigram = stats.get("entropy_floor"), stats.get("bigram_loss")  # text stages only
    val = result.val_loss
    summary = {
        "status": result.status,
        "message": result.message,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "params": params,
        "val_loss": val,
        "val_ppl": math.exp(min(val, 50.0)) if val is not None else None,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "train_loss": result.train_loss,
        "entropy_floor": floor,
        "bigram_loss": bigram,
        "unigram_loss": stats.get("unigram_loss"),
        # share of the bigram -> floor gap the model closed (1.0 = at the floor)
        "gap_closed": (bigram - val) / (bigram - floor) if None not in (floor, bigram, val) else None,
        "wall_s": result.wall_s,
        "total_s": total_s,
        "tokens_per_s": result.tokens_per_s or None,  # None: stopped before a step was timed
        "peak_mem_mb": peak_mb,
        **(extra or {}),
    }
    ckpt.write_atomic(out / "metrics.json", json.dumps(summary, indent=2))
    return summary


HPARAM_METRICS = ("val_loss", "best_val_loss", "val_ppl", "gap_closed", "tokens_per_s", "wall_s")


def hparams_of(cfg: RunConfig) -> dict:
    """The settings a sweep compares, flattened: the model, the main trainer knobs, data, tokenizer, seed."""
    flat = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()}
    flat.update({f"trainer.{k}": getattr(cfg.trainer, k) for k in (
        "lr", "batch_size", "max_steps", "warmup_steps", "weight_decay", "grad_clip", "precision")})
    flat.update({"tokenizer.kind": cfg.tokenizer.kind, "tokenizer.vocab_size": cfg.tokenizer.vocab_size,
                 "data.kind": getattr(cfg.data, "kind", "?"), "stage.name": cfg.stage.name, "seed": cfg.seed})
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}


def log_hparams(writer, cfg: RunConfig, summary: dict) -> None:
    """HParams for TensorBoard, in the run's own event file (add_hparams would open a timestamped sub-run)."""
    from torch.utils.tensorboard.summary import hparams

    metrics = {f"final/{k}": float(summary[k]) for k in HPARAM_METRICS if summary.get(k) is not None}
    for record in hparams(hparams_of(cfg), metrics):
        writer._get_file_writer().add_summary(record)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, summary["steps"])
