"""Modular arithmetic (data=modular), its accuracy evaluator and the grokking progress monitor."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModularDataConfig
from llmlab.data.batch import IGNORE
from llmlab.data.modular import ModularBatches, all_pairs, answers, modular_task
from llmlab.monitors.progress import fourier_share, frequency_energy, restricted_excluded
from llmlab.monitors.progress_history import grokking_summary, seed_interval
from llmlab.runner import Run
from llmlab.store import to_dataclass
from llmlab.sweep.report import grokking_over_seeds
from tests.conftest import compose_config


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_split_is_disjoint_and_covers_every_pair(op):
    task = modular_task(ModularDataConfig(p=11, op=op, train_fraction=0.3, seed=3))
    train = {tuple(r) for r in task.train_pairs.tolist()}
    held = {tuple(r) for r in task.heldout_pairs.tolist()}
    expected = {(a, b) for a in range(11) for b in range(11) if op != "div" or b != 0}
    assert not train & held
    assert train | held == expected
    assert len(train) + len(held) == len(expected)  # no pair twice
    assert len(train) == int(0.3 * len(expected))


def test_split_depends_on_the_data_seed_alone():
    a, b = (modular_task(ModularDataConfig(p=7, seed=s)) for s in (0, 0))
    c = modular_task(ModularDataConfig(p=7, seed=1))
    assert torch.equal(a.train_pairs, b.train_pairs)
    assert not torch.equal(a.train_pairs, c.train_pairs)


def test_division_multiplies_by_the_inverse():
    p = 7
    pairs = all_pairs(p, "div")
    c = answers(pairs[:, 0], pairs[:, 1], "div", p)
    assert torch.equal((c * pairs[:, 1]) % p, pairs[:, 0])  # (a / b) x b = a for every b != 0
    assert answers(torch.tensor([3]), torch.tensor([2]), "div", p).item() == 5  # 2 x 5 = 10 = 3 mod 7
    assert (pairs[:, 1] != 0).all()


def test_the_other_operations():
    a, b = torch.tensor([5, 0, 6]), torch.tensor([4, 3, 6])
    assert answers(a, b, "add", 7).tolist() == [2, 3, 5]
    assert answers(a, b, "sub", 7).tolist() == [1, 4, 0]
    assert answers(a, b, "mul", 7).tolist() == [6, 0, 1]


def test_examples_train_the_answer_alone():
    task = modular_task(ModularDataConfig(p=5, op="sub"))
    batch = task.batch(torch.tensor([[1, 3]]))
    assert batch.input_ids.tolist() == [[1, task.op_id, 3, task.equals_id]]
    assert batch.targets.tolist() == [[IGNORE, IGNORE, IGNORE, 3]]  # 1 - 3 = 3 mod 5
    assert task.decode(batch.input_ids[0].tolist()) == "1 - 3 ="


def test_full_batch_is_every_training_pair_and_minibatches_resume_exactly():
    task = modular_task(ModularDataConfig(p=7))
    full = ModularBatches(task, None, seed=0).next()
    assert torch.equal(full.input_ids, task.inputs(task.train_pairs))
    source = ModularBatches(task, 4, seed=0)
    epoch = torch.cat([source.next().input_ids for _ in range(len(task.train_pairs) // 4)])
    assert len({tuple(r) for r in epoch.tolist()}) == len(epoch)  # without replacement within an epoch
    state = source.state_dict()
    ahead = [source.next().input_ids for _ in range(5)]
    again = ModularBatches(task, 4, seed=0)
    again.load_state_dict(state)
    assert all(torch.equal(x, again.next().input_ids) for x in ahead)


@pytest.mark.parametrize("overrides, field", [
    (["data.p=12"], "data.p"),
    (["data.p=1"], "data.p"),
    (["data.train_fraction=0"], "data.train_fraction"),
    (["data.train_fraction=1.0"], "data.train_fraction"),
    (["data.op=pow"], "data.op"),
    (["monitors.progress.frequencies=0"], "monitors.progress.frequencies"),
])
def test_bad_values_name_the_field_in_one_line(overrides, field):
    with pytest.raises(ConfigError) as err:
        to_dataclass(compose_config(["data=modular", *overrides]))
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


def test_fourier_share_is_exact_on_two_pure_frequencies():
    p = 31
    x = torch.arange(p, dtype=torch.float64)
    wave = lambda k, phase=0.0: torch.cos(2 * math.pi * k * x / p + phase)  # noqa: E731
    embedding = torch.stack([wave(4), 3 * wave(4, 1.0), 0.5 * wave(11, 0.2), wave(11, -2.0)], dim=1)  # (p, d)
    share, top = fourier_share(embedding, 2)
    assert share == pytest.approx(1.0, abs=1e-12)
    assert top == [4, 11]  # frequency 4 holds more energy
    one, _ = fourier_share(embedding, 1)
    shares, constant = frequency_energy(embedding)
    expected_4 = (p / 2) * (1 + 9) / ((p / 2) * (1 + 9 + 0.25 + 1))  # each cosine has energy p/2 x amplitude^2
    assert one == pytest.approx(expected_4, abs=1e-12)
    assert float(constant) == pytest.approx(0.0, abs=1e-12)
    assert float(shares.sum() + constant) == pytest.approx(1.0)
    shifted, _ = fourier_share(embedding + 1.0, 2)  # a constant offset counts in the total, never as a frequency
    assert shifted < 0.99
    noise, _ = fourier_share(torch.randn(p, 64, generator=torch.Generator().manual_seed(0)), 2)
    assert noise < 0.3


class CosineModel(nn.Module):
    """Logits at '=' that are exactly scale x cos(2 pi k (a + b - c) / p) for the number outputs: the generalising
    algorithm of one frequency, nothing else."""

    def __init__(self, p: int, k: int, scale: float):
        super().__init__()
        self.p, self.k, self.scale = p, k, scale
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = ids[:, 0] + ids[:, 2]
        c = torch.arange(self.p + 2)
        logits = self.scale * torch.cos(2 * math.pi * self.k * (s[:, None] - c[None, :]) / self.p)
        return logits[:, None, :].expand(-1, 4, -1)


def test_restricted_and_excluded_loss_of_a_pure_fourier_algorithm():
    p = 13
    task = modular_task(ModularDataConfig(p=p, train_fraction=0.5))
    model = CosineModel(p, k=3, scale=8.0)
    logits = model(task.inputs(task.train_pairs))[:, -1, :p]
    true_loss = torch.nn.functional.cross_entropy(logits, task.answers(task.train_pairs)).item()
    restricted, excluded = restricted_excluded(model, task, [3])
    assert restricted == pytest.approx(true_loss, abs=1e-4)  # the key frequency is the whole algorithm
    assert excluded == pytest.approx(math.log(p), abs=1e-4)  # removing it leaves nothing: uniform logits
    restricted_wrong, excluded_wrong = restricted_excluded(model, task, [5])
    assert restricted_wrong == pytest.approx(math.log(p), abs=1e-4)
    assert excluded_wrong == pytest.approx(true_loss, abs=1e-4)


SMALL_RUN = ["data=modular", "data.p=23", "data.train_fraction=0.4", "arch=gpt2", "model.n_layers=1",
             "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.context_length=4",
             "model.tie_embeddings=false", "trainer.optimizer=adamw", "trainer.lr=3e-3", "trainer.weight_decay=0",
             "trainer.warmup_steps=0", "trainer.min_lr_ratio=1.0", "trainer.grad_clip=0", "trainer.max_steps=150",
             "trainer.log_every=25", "trainer.eval_every=25", "trainer.checkpoint_every=1000",
             "trainer.keep_best=false", "trainer.progress=false", "trainer.threads=1", "device=cpu",
             "monitors=none", "monitors.progress.enabled=true", "monitors.progress.every=50",
             "monitors.progress.frequencies=3", "monitors.max_workers=0"]


@pytest.mark.slow
def test_a_small_run_memorises_before_it_generalises(tmp_path):
    cfg = compose_config(SMALL_RUN)
    cfg.out_dir = str(tmp_path / "run")
    result = Run(to_dataclass(cfg)).execute()
    assert result.status == "completed"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/train_accuracy" in r]
    last = evals[-1]
    assert last["eval/train_accuracy"] == 1.0  # every training pair memorised
    assert last["eval/heldout_accuracy"] < 0.5  # while most held-out pairs are still wrong
    assert last["val/loss"] == pytest.approx(last["eval/heldout_loss"], rel=1e-5)  # validation = held-out pairs
    history = [json.loads(line) for line in
               (tmp_path / "run" / "monitors" / "progress" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [50, 100, 150]
    for h in history:
        assert 0 < h["fourier_share"] <= 1 and len(h["top_frequencies"]) == 3
        assert h["weight_norm"] > 0 and math.isfinite(h["restricted_loss"]) and math.isfinite(h["excluded_loss"])
        assert len(h["frequency_shares"]) == 11
    assert (tmp_path / "run" / "plots" / "grokking.png").stat().st_size > 10_000


def test_grokking_step_is_the_first_evaluation_at_the_threshold():
    curve = [{"step": 10, "train/loss": 1.0},  # a log row without accuracies is skipped
             {"step": 25, "eval/train_accuracy": 0.5, "eval/heldout_accuracy": 0.01},
             {"step": 50, "eval/train_accuracy": 1.0, "eval/heldout_accuracy": 0.2},
             {"step": 75, "eval/train_accuracy": 0.98, "eval/heldout_accuracy": 0.995},
             {"step": 100, "eval/train_accuracy": 1.0, "eval/heldout_accuracy": 0.9}]
    summary = grokking_summary(curve)
    assert summary == {"memorised_at": 50, "grokked_at": 75, "grokking_delay": 25, "train_accuracy": 1.0,
                       "heldout_accuracy": 0.9}
    assert grokking_summary(curve[:3])["grokked_at"] is None and grokking_summary(curve[:3])["grokking_delay"] is None
    assert grokking_summary([{"step": 1, "val/loss": 2.0}]) == {}  # not a modular run


def test_grokking_over_seeds_counts_the_seeds_and_gives_a_t_interval():
    rows = [{"trainer.weight_decay": wd, "seed": s, "grokked_at": g}
            for wd, s, g in [("1.0", "1", 700), ("1.0", "2", 800), ("1.0", "3", 900),
                             ("0.0", "1", None), ("0.0", "2", None), ("0.0", "3", 1500)]]
    with_wd, without = grokking_over_seeds(rows, ["trainer.weight_decay", "seed"])
    assert with_wd["grokked"] == "3/3" and with_wd["grokked_at_mean"] == pytest.approx(800)
    half = 4.303 * 100 / math.sqrt(3)  # t(0.975, 2) x sample std / sqrt(n)
    assert (with_wd["grokked_at_low"], with_wd["grokked_at_high"]) == pytest.approx((800 - half, 800 + half))
    assert without["grokked"] == "1/3" and without["grokked_at_mean"] == 1500 and without["grokked_at_low"] is None
    assert seed_interval([5.0]) is None
    assert grokking_over_seeds([{"seed": "1", "val_loss": 1.0}], ["seed"]) == []
