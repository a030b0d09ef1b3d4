"""Text sources, baselines and batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TextDataConfig
from llmlab.data.dataset import TrainBatches, validation_batches
from llmlab.data.sources import load_corpus
from llmlab.data.stats import bigram_loss, unigram_loss


def test_text_files_split_train_and_validation_per_file(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"line {i} of a\n" for i in range(100)))
    b.write_text("".join(f"line {i} of b\n" for i in range(50)))
    corpus = load_corpus(TextDataConfig(paths=[str(tmp_path / "*.txt")], val_fraction=0.1))
    assert [s.name for s in corpus.sources] == [str(a), str(b)]
    for source, path in zip(corpus.sources, (a, b)):
        text = path.read_text()
        assert source.train_docs[0] + source.val_docs[0] == text
        assert source.val_docs[0].startswith("line ")  # cut at a line break
        assert 0.05 < len(source.val_docs[0]) / len(text) < 0.15
    assert corpus.val_logprob is None


@pytest.mark.parametrize("make,expected", [
    (lambda p: None, "file not found"),
    (lambda p: p.write_text(""), "file is empty"),
    (lambda p: p.write_bytes(b"good line\nbad \xff byte\n"), ":2: not valid UTF-8"),
])
def test_bad_text_files_are_named(tmp_path, make, expected):
    path = tmp_path / "corpus.txt"
    make(path)
    with pytest.raises(ConfigError, match=expected) as err:
        load_corpus(TextDataConfig(paths=[str(path)]))
    assert str(path) in str(err.value)


def test_glob_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no file matches"):
        load_corpus(TextDataConfig(paths=[str(tmp_path / "*.md")]))


def brute_force_bigram(train, val, vocab):
    counts = np.ones((vocab, vocab))
    for x, y in zip(train[:-1], train[1:]):
        counts[x, y] += 1
    probs = counts / counts.sum(1, keepdims=True)
    return -np.mean([math.log(probs[x, y]) for x, y in zip(val[:-1], val[1:])])


def test_baselines_match_a_direct_computation():
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 7, 500), rng.integers(0, 7, 100)
    assert math.isclose(bigram_loss(train, val, 9), brute_force_bigram(train, val, 9))
    counts = np.bincount(train, minlength=9) + 1
    assert math.isclose(unigram_loss(train, val, 9), -np.mean(np.log(counts[val] / counts.sum())))


def test_train_batches_are_next_token_windows_and_resume_exactly():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = TrainBatches(tokens, batch_size=4, seq_len=8, seed=0)
    x, y = batches.next()
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    state = batches.state_dict()
    expected = [batches.next() for _ in range(3)]
    resumed = TrainBatches(tokens, batch_size=4, seq_len=8, seed=123)
    resumed.load_state_dict(state)
    for (ex, ey), (rx, ry) in zip(expected, (resumed.next() for _ in range(3))):
        assert torch.equal(ex, rx) and torch.equal(ey, ry)


def test_validation_batches_are_fixed():
    tokens = np.arange(500, dtype=np.uint16)
    first, second = validation_batches(tokens, 4, 16, 3), validation_batches(tokens, 4, 16, 3)
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_data_too_small_for_the_batch_names_the_fields():
    with pytest.raises(ConfigError, match="trainer.batch_size=64 x model.context_length=128"):
        TrainBatches(np.zeros(1000, dtype=np.uint16), batch_size=64, seq_len=128, seed=0)
    with pytest.raises(ConfigError, match="model.context_length=128 is longer than the validation data"):
        validation_batches(np.zeros(50, dtype=np.uint16), 4, 128, 2)
