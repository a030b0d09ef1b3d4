"""The Trainer built directly, without a Run or Hydra: its loop, the non-finite policy, evaluators and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_config

from llmlab.config.schema import ModelConfig, TrainerConfig
from llmlab.data.batch import IGNORE, Batch
from llmlab.data.dataset import TrainBatches, validation_batches
from llmlab.model.transformer import Transformer
from llmlab.runner import Run
from llmlab.train.checkpointer import Checkpointer, resume_point
from llmlab.train.distributed import SINGLE
from llmlab.train.objectives import NextTokenObjective
from llmlab.train.trainer import Trainer

VOCAB, SEQ = 16, 8


def parts(init_seed: int = 0, data_seed: int = 0):
    torch.manual_seed(init_seed)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=SEQ, vocab_size=VOCAB))
    tokens = np.random.default_rng(0).integers(0, VOCAB, 2000).astype(np.uint16)
    return model, TrainBatches(tokens, 4, SEQ, seed=data_seed), validation_batches(tokens, 4, SEQ, 2)


def config(**fields) -> TrainerConfig:
    base = {"max_steps": 6, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 3,
            "checkpoint_every": 3, "progress": False}
    return TrainerConfig(**{**base, **fields})


class PoisonedAt(NextTokenObjective):
    """The next-token loss, made NaN at the chosen training steps (counted per training call)."""

    def __init__(self, steps: set[int]):
        self.steps, self.calls = steps, 0

    def loss(self, model, batch, record=None):
        loss = super().loss(model, batch, record)
        if model.training:
            self.calls += 1
            if self.calls in self.steps:
                return loss * math.nan
        return loss


@pytest.mark.slow
def test_a_trainer_built_directly_trains_and_evaluates_with_its_evaluators():
    model, batches, val = parts()
    seen = []
    trainer = Trainer(model, NextTokenObjective(), batches, val, config(), evaluators=[
        lambda step, metrics: seen.append((step, metrics["val/loss"])) or {"eval/extra": float(step)}])
    result = trainer.fit()
    assert result.status == "completed" and result.steps == 6
    assert [s for s, _ in seen] == [3, 6]  # at each evaluation, after the validation loss
    assert seen[-1][1] == result.val_loss


@pytest.mark.slow
def test_a_nonfinite_step_is_skipped_and_leaves_the_weights_as_they_were():
    model, batches, val = parts()
    trainer = Trainer(model, PoisonedAt({3}), batches, val, config(max_steps=3, eval_every=10))
    trainer.fit(until=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = trainer.fit()
    assert result.status == "completed" and trainer.state.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # step 3 changed nothing


@pytest.mark.slow
def test_consecutive_nonfinite_steps_past_the_limit_fail_the_run():
    model, batches, val = parts()
    trainer = Trainer(model, PoisonedAt({2, 3, 4}), batches, val, config(max_nonfinite_skips=2))
    result = trainer.fit()
    assert result.status == "failed" and result.steps == 4
    assert "3 consecutive non-finite steps exceed trainer.max_nonfinite_skips=2" in result.message


@pytest.mark.slow
def test_on_nonfinite_stop_fails_at_the_first_one():
    model, batches, val = parts()
    result = Trainer(model, PoisonedAt({2}), batches, val, config(on_nonfinite="stop")).fit()
    assert result.status == "failed" and result.steps == 2 and "trainer.on_nonfinite=stop" in result.message


@pytest.mark.slow
def test_the_checkpointer_saves_and_restores_a_trainer_that_then_ends_where_an_uninterrupted_one_does(tmp_path):
    model, batches, val = parts()
    whole = Trainer(model, NextTokenObjective(), batches, val, config())
    whole.fit()

    model, batches, val = parts()
    checkpointer = Checkpointer(tmp_path / "checkpoints", SINGLE, "ddp", keep=0, meta={"model": {}})
    first = Trainer(model, NextTokenObjective(), batches, val, config(), checkpointer=checkpointer)
    first.fit(until=3)  # checkpoint_every=3: step_3 is written

    found = resume_point(tmp_path / "checkpoints", "auto")
    assert found == tmp_path / "checkpoints" / "step_3"
    model, batches, val = parts(init_seed=1, data_seed=1)  # other weights and data order: the checkpoint restores both
    checkpointer.load_weights(found, model)
    second = Trainer(model, NextTokenObjective(), batches, val, config(), checkpointer=checkpointer)
    second.resume(found)
    assert second.state.step == 3
    second.fit()
    ours, theirs = second.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_debug_first_batch_shows_the_first_batch_once_in_pretraining_too(tmp_path, capsys):
    run = Run(run_config(tmp_path, ["trainer.debug_first_batch=true", "monitors=none"]))
    trainer = run.setup()
    trainer.fit(until=2)
    run.close()
    shown = capsys.readouterr().out
    assert shown.count("first batch: input_ids (8, 32), targets (8, 32)") == 1
    assert "row 0 text: " in shown and "row 0 ids: [" in shown


class ListedBatches:
    """The given batches in turn (a BatchSource without a position worth saving)."""

    def __init__(self, batches: list[Batch]):
        self.batches, self.i = batches, 0

    def next(self) -> Batch:
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def step_gradients(batches: list[Batch], accum: int) -> list[torch.Tensor]:
    """The gradients one train_step applies to a fresh model, with the batch split into `accum` micro-batches."""
    model, _, val = parts()
    trainer = Trainer(model, NextTokenObjective(), ListedBatches(batches), val,
                      config(batch_size=8 // accum, grad_accum_steps=accum, grad_clip=0.0))
    captured = []
    trainer.optimizer.step = lambda: captured.append([p.grad.clone() for p in model.parameters()])
    trainer.train_step()
    return captured[0]


def test_one_batch_of_8_and_4_micro_batches_of_2_give_the_same_update():
    """SFT rows score unequal numbers of targets (the rest IGNORE): the step's loss is the mean over every scored
    target of the step, so splitting the batch changes nothing (a mean of micro-batch means would)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (8, SEQ), generator=gen)
    targets = torch.randint(0, VOCAB, (8, SEQ), generator=gen)
    scored = torch.tensor([1, 8, 2, 7, 3, 3, 8, 1])  # targets each row scores: micro-batches of 2 differ
    targets[torch.arange(SEQ)[None, :] >= scored[:, None]] = IGNORE
    whole = step_gradients([Batch(ids, targets)], 1)
    split = step_gradients([Batch(ids[i:i + 2], targets[i:i + 2]) for i in range(0, 8, 2)], 4)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # what the plain mean of micro-batch means would have given: not the same update
    model, _, _ = parts()
    losses = [NextTokenObjective().loss(model, Batch(ids[i:i + 2], targets[i:i + 2])) / 4 for i in range(0, 8, 2)]
    torch.stack(losses).sum().backward()
    assert not all(torch.allclose(a, p.grad, rtol=1e-3) for a, p in zip(whole, model.parameters(), strict=True))
