"""Bits per byte: the loss over the bytes of text the scored tokens decode to, on cases counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_config

from llmlab.config.schema import ModelConfig, TokenizerConfig, TrainerConfig
from llmlab.data.batch import IGNORE, Batch
from llmlab.data.tokenizers import CharTokenizer, train_tokenizer
from llmlab.model.transformer import Transformer
from llmlab.runner import Run
from llmlab.train.bits_per_byte import LN2, bits_per_byte, scored_bytes, split_bytes, utf8_bytes
from llmlab.train.objectives import NextTokenObjective
from llmlab.train.split_eval import split_loss
from llmlab.train.trainer import Trainer

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def ascii_trainer(batches: list[Batch], vocab: int, text_bytes) -> Trainer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=16, vocab_size=vocab))
    return Trainer(model, NextTokenObjective(), iter(()), batches,
                   TrainerConfig(max_steps=1, batch_size=2, progress=False), text_bytes=text_bytes)


def by_hand(trainer: Trainer, batches: list[Batch]) -> tuple[float, int]:
    """Summed nats over every scored target, and their count."""
    trainer.model.eval()
    with torch.no_grad():
        nats = [F.cross_entropy(trainer.model(b.input_ids).flatten(0, 1), b.targets.flatten(), ignore_index=IGNORE,
                                reduction="sum") for b in batches]
    return float(sum(nats)), sum(int((b.targets != IGNORE).sum()) for b in batches)


def test_a_char_tokenizer_on_ascii_text_gives_the_loss_over_ln2():
    tok = CharTokenizer.train(TEXT)
    ids = torch.tensor(tok.encode(TEXT[:66]))
    batches = [Batch(ids[:32].view(2, 16), ids[1:33].view(2, 16)),
               Batch(ids[33:49].view(1, 16), ids[34:50].view(1, 16))]
    trainer = ascii_trainer(batches, tok.vocab_size, utf8_bytes(tok.decode))
    assert trainer.val_text == [(32, 32), (16, 16)]  # one byte per token
    loss = trainer.evaluate()
    nats, tokens = by_hand(trainer, batches)
    # val/loss is the mean of the batch means; bits per byte weigh each batch by its tokens, as the sum does
    assert trainer.val_bpb() == pytest.approx(nats / tokens / LN2, rel=1e-6)
    assert trainer.val_bpb() != pytest.approx(loss / LN2, rel=1e-6)  # the batches are unequal: not the plain mean


def test_tokens_that_span_several_bytes_are_charged_to_every_byte():
    # a hand-made vocabulary: token i is the text PIECES[i], of 1 to 4 bytes (é: 2 bytes, 日本: 6)
    pieces = ["a", "bc", "é", "def", "日本", " ", "ghij", "."]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    targets = torch.tensor([[0, 1, IGNORE, IGNORE, 2, 3], [IGNORE, 4, 5, 6, 7, IGNORE]])
    # row 0: "abc" (3) + "édef" (5); row 1: "日本 ghij." (6 + 1 + 4 + 1)
    inputs = torch.tensor([[7, 0, 1, 5, 5, 2], [0, 7, 4, 5, 6, 7]])
    assert scored_bytes(Batch(inputs, targets), utf8_bytes(decode)) == 3 + 5 + 12
    trainer = ascii_trainer([Batch(inputs, targets)], len(pieces), utf8_bytes(decode))
    trainer.evaluate()
    nats, tokens = by_hand(trainer, [Batch(inputs, targets)])
    assert tokens == 8
    assert trainer.val_bpb() == pytest.approx(nats / (LN2 * 20), rel=1e-6)
    assert bits_per_byte(nats, 0) is None


def test_a_bpe_split_counts_the_bytes_of_its_text():
    tok = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), TEXT)
    docs = ["the lazy dog jumps. ", "Der Fuchs über den Hund"]  # ü: 2 byte tokens; BPE pieces span several bytes
    streams = [np.asarray(tok.encode(d), dtype=np.int64) for d in docs]
    assert sum(len(s) for s in streams) < sum(len(d) for d in docs)  # it did merge
    first_bytes = [len(tok.decode(s[:1].tolist()).encode()) for s in streams]  # a stream's first token is no target
    n_bytes = split_bytes(streams, utf8_bytes(tok.decode))
    assert n_bytes == sum(len(d.encode()) for d in docs) - sum(first_bytes)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=8, vocab_size=tok.vocab_size))
    result = split_loss(model, streams, 8, 2, torch.device("cpu"))
    assert bits_per_byte(float(result.sums.sum()), n_bytes) == pytest.approx(
        result.loss * result.tokens / (math.log(2) * n_bytes))


@pytest.mark.slow
def test_a_run_logs_bits_per_byte_beside_each_loss(tmp_path):
    run = Run(run_config(tmp_path, ["trainer.max_steps=6", "trainer.eval_every=3", "monitors=none",
                                    "trainer.threads=1"]))
    assert run.execute().status == "completed"
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/loss" in r]
    assert len(evals) == 2 and all(r["val/bpb"] > 0 for r in evals)
    summary = run.summary
    assert summary["val_bpb"] == evals[-1]["val/bpb"]
    # char tokens of ASCII text: one byte each, but end-of-text tokens are scored and decode to none
    assert 0 < summary["val_bytes_scored"] < summary["val_tokens_scored"]
    assert summary["val_bpb_full"] == pytest.approx(
        summary["val_loss_full"] * summary["val_tokens_scored"] / (LN2 * summary["val_bytes_scored"]))


def test_the_sweep_report_and_the_chat_page_show_bits_per_byte(tmp_path):
    from llmlab.run_info import RunInfo
    from llmlab.sweep.collect import JobRecord
    from llmlab.sweep.report import job_row

    summary = {"val_loss": 1.2, "val_bpb": 1.73, "val_loss_full": 1.25, "val_bpb_full": 1.8, "steps": 4}
    row = job_row(JobRecord("a", tmp_path, {"tokenizer": "bpe"}, "completed", summary, []), ["tokenizer"])
    assert (row["val_bpb"], row["val_bpb_full"]) == (1.73, 1.8)
    shown = {key: (label, value) for key, label, value in RunInfo(tmp_path, tmp_path, summary=summary).metrics()}
    assert shown["val_bpb"] == ("val bits/byte", 1.73) and shown["val_bpb_full"] == ("whole-split bits/byte", 1.8)
