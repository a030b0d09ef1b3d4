"""Pretraining: next-token loss on every token of a text corpus, from a new model (or an imported one)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import (
    HFDataConfig,
    InductionDataConfig,
    MixDataConfig,
    ModularDataConfig,
    RunConfig,
    SyntheticDataConfig,
    architecture_differences,
)
from llmlab.config.stages import PretrainConfig
from llmlab.data.batch import Batch
from llmlab.data.copy_probe import CopyProbe, copy_probe
from llmlab.data.dataset import TrainBatches, validation_batches
from llmlab.data.fingerprint import fingerprint, shard_record, source_record
from llmlab.data.induction import span_probe
from llmlab.data.mixture import MixtureBatches, mixed_validation_batches
from llmlab.data.pipeline import decode_documents, token_streams
from llmlab.data.prepared import combined_stats, prepare_sources, tokenizer_sample, unknown_warnings
from llmlab.data.sources import annotated_validation, induction_validation, load_corpus, span_generator
from llmlab.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from llmlab.model.generation import SamplingConfig, generate
from llmlab.model.transformer import Transformer
from llmlab.rundir import RunDir
from llmlab.stages.base import Stage, StageContext, StageParts
from llmlab.stages.modular import modular_parts
from llmlab.train.bits_per_byte import utf8_bytes
from llmlab.train.evaluators import InContextScore
from llmlab.train.objectives import NextTokenObjective

log = logging.getLogger(__name__)

SPAN_PROBE_ROWS = 256  # data=induction: validation documents the in-context score is measured on


class Pretrain(Stage):
    name = "pretrain"
    config = PretrainConfig

    def build(self, ctx: StageContext) -> StageParts:
        cfg, trainer = ctx.cfg, ctx.cfg.trainer
        if isinstance(cfg.data, ModularDataConfig):  # its own vocabulary, no tokenizer: llmlab/stages/modular.py
            return modular_parts(ctx, cfg.data)
        if isinstance(cfg.data, HFDataConfig | MixDataConfig):
            return self.build_sharded(ctx)
        corpus = load_corpus(cfg.data)
        tokenizer, from_cache = self.tokenizer(ctx, lambda: "\n".join(corpus.train_docs))
        streams = token_streams(corpus, tokenizer, RunDir(ctx.out_dir).tokenizer, Path(cfg.cache_dir) / "tokens",
                                from_cache)
        model = new_model(cfg, tokenizer.vocab_size, ctx.device, pretrained=ctx.resume_from is None)
        seq_len, ranks = cfg.model.context_length, ctx.place.world_size
        train_batches = TrainBatches(streams.train, trainer.batch_size, seq_len, seed=cfg.seed,
                                     rank=ctx.place.rank, world_size=ranks)
        # every rank evaluates the whole validation set, batched as one process with the global batch would
        val_batches = validation_batches(streams.val, trainer.batch_size * ranks, seq_len, trainer.eval_batches,
                                         warn=ctx.place.is_main)
        parts = self.parts(ctx, model, tokenizer, train_batches, val_batches, len(streams.train), streams.stats,
                           [streams.val])
        parts.data_fingerprint = fingerprint(source_record(s.name, s.train_docs, s.val_docs) for s in corpus.sources)
        if isinstance(cfg.data, InductionDataConfig):
            self.add_in_context_score(ctx, parts, tokenizer)
        return parts

    def add_in_context_score(self, ctx: StageContext, parts: StageParts, tokenizer: Tokenizer) -> None:
        """data=induction: eval/icl_score at each evaluation, and the floors it is measured against in
        dataset_stats.json (the optimum's loss on the repeated tokens and on their first occurrences)."""
        data = ctx.cfg.data  # whose documents fit the context (RunConfig checks it)
        docs = induction_validation(data)
        parts.stats["induction"] = {**docs.floors(), "unigram_entropy": span_generator(data).unigram_entropy}
        parts.evaluators.append(InContextScore(parts.model, span_probe(docs, tokenizer, SPAN_PROBE_ROWS),
                                               ctx.device))

    def build_sharded(self, ctx: StageContext) -> StageParts:
        """data=hf / data=mix: the sources tokenized into shards (once; python -m llmlab.prepare can do it ahead),
        memory-mapped; windows drawn from each source by weight."""
        cfg, trainer, cache = ctx.cfg, ctx.cfg.trainer, Path(ctx.cfg.cache_dir)
        tokenizer, from_cache = self.tokenizer(ctx, lambda: tokenizer_sample(cfg.data, cache))
        prepared = prepare_sources(cfg.data, tokenizer, cache, progress=ctx.place.is_main)
        model = new_model(cfg, tokenizer.vocab_size, ctx.device, pretrained=ctx.resume_from is None)
        seq_len, ranks, batch = cfg.model.context_length, ctx.place.world_size, trainer.batch_size
        if isinstance(cfg.data, HFDataConfig):
            source = prepared[0]
            train_batches = TrainBatches(source.train, batch, seq_len, seed=cfg.seed, rank=ctx.place.rank,
                                         world_size=ranks)
            val_batches = validation_batches(source.val, batch * ranks, seq_len, trainer.eval_batches,
                                             warn=ctx.place.is_main)
        else:
            weights, names = [p.weight for p in prepared], [p.name for p in prepared]
            if ctx.place.is_main:
                total = sum(weights)
                log.info("mixture: " + ", ".join(f"{p.name} {p.weight / total:.3f} ({len(p.train):,} tokens)"
                                                 for p in prepared))
            train_batches = MixtureBatches([p.train for p in prepared], weights, batch, seq_len, seed=cfg.seed,
                                           rank=ctx.place.rank, world_size=ranks, names=names)
            val_batches = mixed_validation_batches([p.val for p in prepared], weights, batch * ranks, seq_len,
                                                   trainer.eval_batches)
        stats = combined_stats(prepared, tokenizer, from_cache)
        if ctx.place.is_main:
            for line in unknown_warnings(prepared, getattr(tokenizer, "unk_id", None)):
                log.warning(f"warning: {line}")
        parts = self.parts(ctx, model, tokenizer, train_batches, val_batches, stats["train_tokens"], stats,
                           [p.val for p in prepared])
        parts.data_fingerprint = fingerprint(shard_record(p.name, p.directory) for p in prepared)
        return parts

    def parts(self, ctx: StageContext, model: Transformer, tokenizer: Tokenizer, train_batches, val_batches,
              train_tokens: int, stats: dict, val_split: list) -> StageParts:
        cfg, trainer = ctx.cfg, ctx.cfg.trainer
        tokens_per_step = (trainer.batch_size * ctx.place.world_size * trainer.grad_accum_steps
                           * cfg.model.context_length)
        return StageParts(
            model, NextTokenObjective(), train_batches, val_batches,
            steps_per_epoch=train_tokens / tokens_per_step, stats=stats,
            sample=sampler(cfg, model, tokenizer, ctx.device), describe_batch=describer(tokenizer),
            decode=tokenizer.decode, manifest={"base": None}, copy_probe=copy_prober(cfg, tokenizer),
            val_split=val_split, text_bytes=utf8_bytes(tokenizer.decode))

    def tokenizer(self, ctx: StageContext, train_text: Callable[[], str]) -> tuple[Tokenizer, bool]:
        """The one a resumed run already uses, an imported model's, or one trained on the text (or cached);
        saved into the run directory; whether it came from a cache."""
        resumed = RunDir.of_checkpoint(ctx.resume_from).tokenizer if ctx.resume_from else None
        if resumed is not None and not resumed.is_dir():
            resumed = None
        if resumed is not None:
            tokenizer, cached = load_tokenizer(resumed), True
        elif ctx.cfg.model.path:  # an imported model brings its own tokenizer
            from llmlab.interop.hf_import import pretrained_tokenizer

            tokenizer, cached = pretrained_tokenizer(ctx.cfg.model), False
        else:
            tokenizer, cached = build_tokenizer(ctx.cfg.tokenizer, train_text())
        own = RunDir(ctx.out_dir).tokenizer
        if resumed != own and ctx.place.is_main:
            tokenizer.save(own)
        return tokenizer, cached

    def check_resume(self, manifest: dict, ctx: StageContext) -> None:
        differing = architecture_differences(manifest.get("model", {}), ctx.cfg.model)
        if differing:
            pairs = ", ".join(f"model.{k}: checkpoint {saved!r} vs config {now!r}" for k, saved, now in differing)
            raise ConfigError(f"checkpoint {ctx.resume_from} has another architecture ({pairs}); "
                              "use a new hydra.run.dir or trainer.resume=never")


def new_model(cfg: RunConfig, vocab_size: int, device: torch.device, pretrained: bool) -> Transformer:
    """A new model for the tokenizer's vocabulary; model=hf: the imported one (its weights unless resuming)."""
    if not cfg.model.path:
        if cfg.model.vocab_size not in (None, vocab_size):
            log.warning(f"warning: model.vocab_size={cfg.model.vocab_size} is ignored: the tokenizer decides the "
                        f"vocabulary ({vocab_size} ids); set tokenizer.vocab_size instead")
        return Transformer(dataclasses.replace(cfg.model, vocab_size=vocab_size)).to(device)
    if vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.path={cfg.model.path}: its tokenizer has {vocab_size} ids but the model "
                          f"only {cfg.model.vocab_size} embeddings")
    model = Transformer.uninitialized(cfg.model)  # every weight is loaded: from path or the checkpoint
    if pretrained:
        from llmlab.interop.hf_import import load_pretrained_weights

        load_pretrained_weights(model, cfg.model)
    return model.to(device)


def sampler(cfg: RunConfig, model: Transformer, tokenizer: Tokenizer, device: torch.device):
    """A continuation of trainer.sample_prompt, seeded by the step (the global RNG is left alone)."""
    prompt = [tokenizer.bos_id, *tokenizer.encode(cfg.trainer.sample_prompt)]
    sampling = SamplingConfig(max_new_tokens=cfg.trainer.sample_tokens, temperature=0.8, top_k=50)

    def sample(step: int) -> str:
        gen = torch.Generator(device).manual_seed(cfg.seed + step)
        ids = generate(model, torch.tensor([prompt], device=device), sampling, gen)[0].tolist()
        return decode_documents(tokenizer, ids)

    return sample


def copy_prober(cfg: RunConfig, tokenizer: Tokenizer):
    """The embedded language's validation documents with the names they copy, for the circuits monitor."""
    data = cfg.data
    if not isinstance(data, SyntheticDataConfig):
        return None
    def probe(rows: int, tokens: int) -> CopyProbe | None:
        return copy_probe(annotated_validation(data), tokenizer, rows, min(tokens, cfg.model.context_length))

    return probe


def describer(tokenizer: Tokenizer):
    def describe(batch: Batch) -> str:
        ids = batch.input_ids[0].tolist()
        return "\n".join([
            f"first batch: input_ids {tuple(batch.input_ids.shape)}, targets {tuple(batch.targets.shape)}",
            f"row 0 text: {decode_documents(tokenizer, ids)!r}",
            f"row 0 ids: {ids}",
            "row 0 targets: the inputs shifted by one (every token is trained on)",
        ])

    return describe
