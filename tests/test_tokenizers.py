from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TokenizerConfig
from llmlab.data import tokenizers
from llmlab.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

KINDS = ("char", "byte", "bpe", "unigram")
VOCAB = 384  # sentencepiece: 259 fixed pieces + the text's ~40 characters + some merges

# Whitespace that must survive: leading, repeated and trailing spaces, tabs, blank lines, CRLF.
TRICKY = "  two leading\n\n\tTab\tand   three spaces  \r\ntrailing  \n\n ünïcödé 日本 \n"
# Characters the training text never has (sentencepiece must fall back to bytes, never <unk>).
UNSEEN = "Ωμέγα ∑ 🦜👩‍🔬 \x00\x0b\x0c\x85\u2028\u3000\ufeff e\u0301 ▁ literal ▁▁ \U0010ffff"


def make_text(n_chars: int = 200_000, seed: int = 0) -> str:
    """Lines of Zipf-distributed words with indentation, tabs and blank lines; every char of TRICKY."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéü"
    words = ["".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(2000)] + ["日本", "ünïcödé"]
    weights = [1 / (i + 1) for i in range(len(words))]
    lines, size = [TRICKY], len(TRICKY)
    while size < n_chars:
        indent = rng.choice(["", "", "", "  ", "    ", "\t"])
        line = indent + " ".join(rng.choices(words, weights, k=rng.randint(0, 14))) + rng.choice([".", ",", ""])
        lines.append(line.rstrip(" ") + rng.choice(["", "", "  "]) + rng.choice(["", "\r"]))
        size += len(lines[-1]) + 1
    return "\n".join(lines) + "\nTAB\tCRLF\r"


def config(kind: str, tmp_path: Path, **kw) -> TokenizerConfig:
    vocab = VOCAB if kind in ("bpe", "unigram") else 0
    return TokenizerConfig(kind=kind, vocab_size=kw.pop("vocab_size", vocab), cache_dir=str(tmp_path), **kw)


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    text = make_text()
    return {kind: train_tokenizer(TokenizerConfig(kind=kind, vocab_size=VOCAB), text) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(trained, kind):
    tok = trained[kind]
    assert tok.kind == kind
    for s in (TRICKY, "", "\n", "   ", make_text(5_000, seed=1)):
        assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
def test_round_trip_of_unseen_characters(trained, kind):
    tok = trained[kind]
    rng = random.Random(2)
    pool = UNSEEN + TRICKY
    for s in [UNSEEN, *("".join(rng.choices(pool, k=rng.randint(1, 60))) for _ in range(200))]:
        assert tok.decode(tok.encode(s)) == s, repr(s)
    if isinstance(tok, SentencePieceTokenizer):
        assert 0 not in tok.encode(UNSEEN)  # <unk>: byte fallback makes it unreachable


def test_char_unknown_characters_decode_to_replacement(trained):
    tok = trained["char"]
    ids = tok.encode("ab☃c")
    assert ids[2] == CharTokenizer.unk_id and CharTokenizer.unk_id not in tok.encode(TRICKY)
    assert tok.decode(ids) == "ab\ufffdc"


def test_char_vocabulary_is_sorted_characters():
    tok = CharTokenizer.train("hello world\n")
    assert tok.chars == "\n dehlorw" and tok.vocab_size == len(tok.chars) + 2
    assert tok.encode("d") == [2 + tok.chars.index("d")]


def test_byte_tokenizer_replaces_invalid_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and tok.eos_id == 256
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character


@pytest.mark.parametrize("kind", KINDS)
def test_eos_is_distinct_never_encoded_and_skipped_by_decode(trained, kind):
    tok = trained[kind]
    text = make_text(20_000, seed=3)
    ids = tok.encode(text + UNSEEN if kind != "char" else text)
    assert 0 <= tok.eos_id < tok.vocab_size
    assert tok.eos_id not in ids and max(ids) < tok.vocab_size
    a, b = tok.encode("one"), tok.encode("two")
    assert tok.decode([*a, tok.eos_id, *b, tok.eos_id]) == "onetwo"


@pytest.mark.parametrize("kind", KINDS)
def test_encode_to_array_matches_encode(trained, kind):
    tok = trained[kind]
    text = make_text(100_000, seed=4) + (UNSEEN if kind != "char" else "")
    array = tok.encode_to_array(text)
    assert array.dtype == np.uint16 and array.ndim == 1
    assert array.tolist() == tok.encode(text)
    assert tok.encode_to_array("").shape == (0,)
    # decode takes lists, numpy arrays and torch tensors alike
    assert tok.decode(array) == tok.decode(torch.from_numpy(array.astype(np.int64))) == tok.decode(list(array))


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_lines_are_encoded_independently(trained, kind, monkeypatch):
    tok = trained[kind]
    assert tok.vocab_size == VOCAB
    newline = tok.encode("\n")
    assert len(newline) == 1
    assert tok.encode("ab cd\nef") == tok.encode("ab cd") + newline + tok.encode("ef")
    # Long texts go to sentencepiece as one threaded batch of lines, short ones line by line: same ids.
    text = make_text(100_000, seed=12) + UNSEEN
    batched = tok.encode_to_array(text)
    monkeypatch.setattr(tokenizers, "_BATCH_CHARS", len(text) + 1)
    assert np.array_equal(tok.encode_to_array(text), batched)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_ids(trained, kind, tmp_path):
    tok = trained[kind]
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok) and loaded.kind == kind
    assert (loaded.vocab_size, loaded.eos_id) == (tok.vocab_size, tok.eos_id)
    text = make_text(20_000, seed=5)
    assert loaded.encode(text) == tok.encode(text)
    expected = {"tokenizer.json", "tokenizer.model"} if kind in ("bpe", "unigram") else {"tokenizer.json"}
    assert {p.name for p in (tmp_path / "tok").iterdir()} == expected


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_training_is_deterministic(kind):
    text = make_text(100_000, seed=6)
    first = SentencePieceTokenizer.train(text, kind, 320)
    second = SentencePieceTokenizer.train(text, kind, 320)
    assert first.model_proto == second.model_proto


@pytest.mark.parametrize("kind", KINDS)
def test_second_build_comes_from_the_cache(kind, tmp_path, monkeypatch):
    cfg, text = config(kind, tmp_path), make_text(50_000, seed=7)
    tok, from_cache = build_tokenizer(cfg, text)
    assert not from_cache

    def no_training(*args):
        raise AssertionError("trained although the cache had it")

    monkeypatch.setattr(tokenizers, "train_tokenizer", no_training)
    start = time.perf_counter()
    again, from_cache = build_tokenizer(cfg, text)
    assert from_cache and time.perf_counter() - start < 1.0
    assert again.encode(text) == tok.encode(text)
    entries = list(tmp_path.iterdir())  # one complete entry, no temporary directories left behind
    assert [p.name for p in entries] == [f"{kind}-{tokenizers.cache_key(cfg, text)[:16]}"]


def test_retrain_forces_training_and_new_text_gets_a_new_entry(tmp_path, monkeypatch):
    calls = []
    real_train = tokenizers.train_tokenizer
    monkeypatch.setattr(tokenizers, "train_tokenizer", lambda *a: calls.append(1) or real_train(*a))
    text = make_text(50_000, seed=8)
    build_tokenizer(config("bpe", tmp_path), text)
    _, from_cache = build_tokenizer(config("bpe", tmp_path, retrain=True), text)
    assert not from_cache and len(calls) == 2
    assert len(list(tmp_path.iterdir())) == 1  # replaced in place
    _, from_cache = build_tokenizer(config("bpe", tmp_path), text)
    assert from_cache and len(calls) == 2
    _, from_cache = build_tokenizer(config("bpe", tmp_path), text + "more")
    assert not from_cache and len(calls) == 3
    assert len(list(tmp_path.iterdir())) == 2


def test_damaged_cache_entry_is_retrained(tmp_path):
    cfg, text = config("char", tmp_path), make_text(10_000, seed=9)
    build_tokenizer(cfg, text)
    (entry,) = tmp_path.iterdir()
    (entry / "tokenizer.json").write_text("{ not json")
    tok, from_cache = build_tokenizer(cfg, text)
    assert not from_cache and load_tokenizer(entry).encode(text) == tok.encode(text)


def test_losing_the_publish_race_uses_the_winners_entry(tmp_path, monkeypatch):
    cfg, text = config("byte", tmp_path), "hello"
    entry = tmp_path / f"byte-{tokenizers.cache_key(cfg, text)[:16]}"
    real_train = tokenizers.train_tokenizer

    def train_while_another_process_publishes(*args):
        ByteTokenizer().save(entry)
        return real_train(*args)

    monkeypatch.setattr(tokenizers, "train_tokenizer", train_while_another_process_publishes)
    tok, from_cache = build_tokenizer(cfg, text)
    assert not from_cache and tok.encode(text) == list(b"hello")
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_size_too_large_is_a_config_error(kind):
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=100000 is too large .*at most \d+ pieces"):
        SentencePieceTokenizer.train(make_text(20_000, seed=10), kind, 100_000)


def test_vocab_size_too_small_is_a_config_error():
    text = make_text(20_000, seed=11)
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=100 .*at least 260"):
        SentencePieceTokenizer.train(text, "bpe", 100)
    # Above the fixed pieces but below them plus the text's characters: sentencepiece's minimum.
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=270 is too small .*at least \d+"):
        SentencePieceTokenizer.train(text, "unigram", 270)


def test_sentencepiece_needs_some_text():
    with pytest.raises(ConfigError, match="empty"):
        SentencePieceTokenizer.train("\n\n", "bpe", 300)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"no tokenizer at {missing}"):
        load_tokenizer(missing)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"format": "llmlab-tokenizer-1", "kind": "bpe", "vocab_size": 9, '
                                           '"eos_id": 1, "model": "tokenizer.model"}')
    with pytest.raises(ConfigError, match=f"at {broken}"):
        load_tokenizer(broken)
