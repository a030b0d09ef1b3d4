"""Hugging Face datasets, peers' formats, token shards, mixtures and LLMLAB_DATA_DIR (all offline, on data the
tests write)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from llmlab.config.errors import ConfigError
from llmlab.config.schema import HFDataConfig, HFSourceConfig, MixDataConfig, TextDataConfig, TokenizerConfig
from llmlab.data import shards
from llmlab.data.chat import load_conversations
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.hf import open_source
from llmlab.data.mixture import MixtureBatches, mixed_validation_batches
from llmlab.data.pipeline import encode_documents
from llmlab.data.post_training import prepare_chat_items
from llmlab.data.prepared import prepare_sources, tokenizer_sample
from llmlab.data.sources import load_corpus
from llmlab.data.tokenizers import ByteTokenizer, build_tokenizer
from llmlab.runner import Run
from llmlab.store import to_dataclass
from tests.conftest import REPO, compose_config, run_cli

DOCS = [f"document {i}: the {'quick ' * (i % 5)}fox {i * 7 % 13}" for i in range(300)]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture
def text_path_tokens(tmp_path):
    """The text path's train and validation tokens for DOCS, as minimind's pretraining JSONL, and its tokenizer."""
    corpus = load_corpus(TextDataConfig(paths=[str(write_jsonl(tmp_path / "docs.jsonl", DOCS))], val_fraction=0.1))
    tokenizer, _ = build_tokenizer(TokenizerConfig(cache_dir=str(tmp_path / "tok")), "\n".join(corpus.train_docs))
    return tokenizer, encode_documents(tokenizer, corpus.train_docs), encode_documents(tokenizer, corpus.val_docs)


def make_source(kind: str, tmp_path: Path) -> str:
    ds = Dataset.from_dict({"text": DOCS, "id": list(range(len(DOCS)))})
    if kind == "save_to_disk":
        ds.save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if kind == "parquet":
        ds.to_parquet(str(tmp_path / "docs.parquet"))
        return str(tmp_path / "docs.parquet")
    return str(write_jsonl(tmp_path / "hf.jsonl", DOCS))


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "jsonl"])
def test_a_dataset_without_validation_split_gives_the_text_paths_tokens(tmp_path, text_path_tokens, kind):
    tokenizer, train, val = text_path_tokens
    data = HFDataConfig(path=make_source(kind, tmp_path), val_fraction=0.1, shard_docs=64, num_proc=1)
    cache = tmp_path / "cache"
    assert tokenizer_sample(data, cache) == "\n".join(d for i, d in enumerate(DOCS) if (i + 1) % 10)
    source = prepare_sources(data, tokenizer, cache, progress=False)[0]
    assert len(source.train.paths) == 5  # 300 rows in parts of 64: windows cross four shard boundaries
    assert np.array_equal(source.train[:], train) and np.array_equal(source.val[:], val)
    assert source.stats["train_documents"] == 270 and source.stats["val_documents"] == 30
    manifest = json.loads((source.directory / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and len(manifest["tokenizer_sha256"]) == 64
    assert [f["sha256"] for f in manifest["streams"]["train"]] == [
        shards.sha256_file(p) for p in sorted(source.directory.glob("train-*.train.bin"))]


def test_a_validation_split_validates(tmp_path, text_path_tokens):
    tokenizer = text_path_tokens[0]
    DatasetDict({"train": Dataset.from_dict({"text": DOCS[:200]}),
                 "validation": Dataset.from_dict({"text": DOCS[200:]})}).save_to_disk(str(tmp_path / "dd"))
    data = HFDataConfig(path=str(tmp_path / "dd"), val_split="validation", shard_docs=64, num_proc=1)
    source = prepare_sources(data, tokenizer, tmp_path / "cache", progress=False)[0]
    assert np.array_equal(source.train[:], encode_documents(tokenizer, DOCS[:200]))
    assert np.array_equal(source.val[:], encode_documents(tokenizer, DOCS[200:]))


@pytest.mark.parametrize("field,split,expected", [
    ("body", "train", "data.text_field=body: .* has no such column \\(it has text, id\\)"),
    ("text", "test", "data.split=test: .* has no such split \\(it has train\\)"),
])
def test_a_wrong_column_or_split_is_one_line(tmp_path, text_path_tokens, field, split, expected):
    DatasetDict({"train": Dataset.from_dict({"text": DOCS, "id": list(range(300))})}).save_to_disk(str(tmp_path / "d"))
    data = HFDataConfig(path=str(tmp_path / "d"), text_field=field, split=split, num_proc=1)
    with pytest.raises(ConfigError, match=expected) as err:
        prepare_sources(data, text_path_tokens[0], tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value)


def test_sharded_tokens_read_across_boundaries(tmp_path):
    paths = []
    for i, (a, b) in enumerate([(0, 5), (5, 5), (5, 12), (12, 30)]):  # one shard is empty
        paths.append(tmp_path / f"{i}.bin")
        np.arange(a, b, dtype=np.uint16).tofile(paths[-1])
    tokens = shards.ShardedTokens(paths, np.uint16)
    assert len(tokens) == 30
    for start, stop in [(0, 30), (3, 7), (4, 13), (12, 12), (29, 30)]:
        assert tokens[start:stop].tolist() == list(range(start, stop))
    tokens = shards.ShardedTokens(paths, np.uint16)
    tokens.MAX_OPEN = 2  # at most two shards mapped: the least recently read is unmapped first
    for start, stop in [(0, 30), (29, 30), (3, 7), (4, 13), (0, 2)]:
        assert tokens[start:stop].tolist() == list(range(start, stop)) and len(tokens._open) <= 2


def interrupt_after(monkeypatch, calls: int):
    """The tokenizer raises KeyboardInterrupt on its calls-th document: a part is cut off mid-write."""
    real = shards.worker_tokenizer
    count = {"n": 0}

    class Interrupting:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

        def encode_to_array(self, text):
            count["n"] += 1
            if count["n"] == calls:
                raise KeyboardInterrupt
            return self.tokenizer.encode_to_array(text)

    monkeypatch.setattr(shards, "worker_tokenizer", lambda d: Interrupting(real(d)))
    monkeypatch.setattr(shards, "ROWS_PER_READ", 16)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))}


def test_an_interrupted_prepare_resumes_byte_identical(tmp_path, text_path_tokens, monkeypatch):
    tokenizer = text_path_tokens[0]
    path = make_source("parquet", tmp_path)
    data = HFDataConfig(path=path, val_fraction=0.1, shard_docs=64, num_proc=1)
    whole = prepare_sources(data, tokenizer, tmp_path / "whole", progress=False)[0]
    expected = shard_bytes(whole.directory)

    with monkeypatch.context() as patch:
        interrupt_after(patch, 150)  # inside the third part, after two whole parts
        with pytest.raises(KeyboardInterrupt):
            prepare_sources(data, tokenizer, tmp_path / "cut", progress=False)
    directory = tmp_path / "cut" / "shards" / whole.directory.name
    assert sorted(shard_bytes(directory)) == sorted(n for n in expected if n.startswith(("train-00000", "train-00001")))
    assert not list(directory.glob(".*tmp*")) and not (directory / "manifest.json").exists()
    (directory / "train-00003.train.bin").write_bytes(b"\x01" * 10)  # a shard a killed process left without record

    resumed = prepare_sources(data, tokenizer, tmp_path / "cut", progress=False)[0]
    assert shard_bytes(resumed.directory) == expected
    assert (resumed.directory / "manifest.json").read_text() == (whole.directory / "manifest.json").read_text()


def test_a_damaged_shard_is_detected_by_its_checksum_and_written_again(tmp_path, text_path_tokens, capsys):
    tokenizer = text_path_tokens[0]
    data = HFDataConfig(path=make_source("jsonl", tmp_path), val_fraction=0.1, shard_docs=64, num_proc=1)
    source = prepare_sources(data, tokenizer, tmp_path / "cache", progress=False)[0]
    expected = shard_bytes(source.directory)
    shard = source.directory / "train-00002.train.bin"
    damaged = bytearray(shard.read_bytes())
    damaged[10] ^= 1  # same size, one bit off
    shard.write_bytes(bytes(damaged))
    capsys.readouterr()
    again = prepare_sources(data, tokenizer, tmp_path / "cache", progress=False)[0]
    assert f"token shard {shard} does not match its checksum; encoding its rows again" in capsys.readouterr().err
    assert shard_bytes(again.directory) == expected


def test_mixture_proportions_over_10000_draws_are_within_2_percent_of_the_weights():
    weights = [0.6, 0.3, 0.1]
    streams = [np.full(1000, i, dtype=np.uint16) for i in range(3)]  # a window's tokens say its source
    batches = MixtureBatches(streams, weights, batch_size=100, seq_len=8, seed=0)
    drawn = torch.cat([batches.next().input_ids[:, 0] for _ in range(100)])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert len(drawn) == 10_000 and batches.drawn == torch.bincount(drawn, minlength=3).tolist()
    assert all(abs(s - w) < 0.02 for s, w in zip(share.tolist(), weights))
    state = batches.state_dict()  # a resumed mixture draws the same windows
    expected = batches.next()
    other = MixtureBatches(streams, weights, batch_size=100, seq_len=8, seed=1)
    other.load_state_dict(state)
    assert torch.equal(other.next().input_ids, expected.input_ids)
    val = mixed_validation_batches(streams, weights, batch_size=10, seq_len=8, n_batches=2)
    assert torch.bincount(torch.cat([b.input_ids[:, 0] for b in val]), minlength=3).tolist() == [12, 6, 2]


def test_an_offline_hub_name_fails_at_once_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.path=roneneldan/TinyStories: not a local file or directory .* "
                                          "the hub is offline \\(HF_HUB_OFFLINE is set\\)") as err:
        open_source(HFSourceConfig(path="roneneldan/TinyStories"), tmp_path / "cache")
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)


def test_relative_paths_resolve_in_llmlab_data_dir(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "corpus.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    write_jsonl(data_dir / "docs.jsonl", DOCS)
    monkeypatch.setenv("LLMLAB_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert load_corpus(TextDataConfig(paths=["corpus.txt"])).sources[0].name == str(data_dir / "corpus.txt")
    assert len(open_source(HFSourceConfig(path="docs.jsonl"), tmp_path / "cache").train) == 300
    with pytest.raises(ConfigError) as err:
        load_corpus(TextDataConfig(paths=["missing.txt"]))
    assert str(err.value) == f"data.paths: file not found: missing.txt (looked in {data_dir}, from LLMLAB_DATA_DIR)"
    with pytest.raises(ConfigError, match=f"data.path=gone.parquet: no such file .* \\(looked in {data_dir}"):
        open_source(HFSourceConfig(path="gone.parquet"), tmp_path / "cache")


def test_minimind_pretrain_and_sft_records_load(tmp_path):
    pretrain = write_jsonl(tmp_path / "pretrain_hq.jsonl", [f"<|im_start|>text {i}<|im_end|>" for i in range(40)])
    corpus = load_corpus(TextDataConfig(paths=[str(pretrain)], val_fraction=0.1))
    assert corpus.train_docs[0] == "<|im_start|>text 0<|im_end|>" and len(corpus.val_docs) == 4
    sft = tmp_path / "sft_mini_512.jsonl"
    sft.write_text(json.dumps({"conversations": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]}) + "\n")
    [conversation] = load_conversations([sft])
    assert [(m.role, m.content) for m in conversation] == [("user", "hi"), ("assistant", "hello")]


def test_conversations_and_pairs_load_from_a_dataset(tmp_path):
    chat = [{"conversations": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    items = prepare_chat_items(HFDataConfig(path=str(tmp_path / "sft.jsonl"), kind="hf_chat", val_fraction=0.25),
                               ChatTemplate(ByteTokenizer()), 64, tmp_path / "cache")
    assert (items.stats["train_samples"], items.stats["val_samples"]) == (6, 2)  # rows 3 and 7 validate
    pairs = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)]
    Dataset.from_list(pairs).save_to_disk(str(tmp_path / "pairs"))
    items = prepare_chat_items(HFDataConfig(path=str(tmp_path / "pairs"), kind="hf_prefs", val_fraction=0.5),
                               ChatTemplate(ByteTokenizer()), 64, tmp_path / "cache")
    assert (items.stats["train_samples"], items.stats["val_samples"]) == (2, 2)
    bad = [{"conversations": [{"role": "user", "content": "q"}]}] * 4
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(ConfigError, match="data.path=.*bad.jsonl: train row 0: conversations\\[0\\].role: expected "
                                          "the last message to be 'assistant'"):
        prepare_chat_items(HFDataConfig(path=str(tmp_path / "bad.jsonl"), kind="hf_chat", val_fraction=0.25),
                           ChatTemplate(ByteTokenizer()), 64, tmp_path / "cache")


def test_a_mixture_config_takes_sources_with_weights():
    cfg = to_dataclass(compose_config(["data=mix", "data.sources=[{path: a.txt, weight: 0.7}, {path: b.parquet}]"]))
    assert isinstance(cfg.data, MixDataConfig)
    assert [(s.path, s.weight) for s in cfg.data.sources] == [("a.txt", 0.7), ("b.parquet", 1.0)]
    with pytest.raises(ConfigError, match="data.sources\\[\\].weight must be > 0"):
        to_dataclass(compose_config(["data=mix", "data.sources=[{path: a.txt, weight: 0}]"]))


HF_RUN = ["+debug=fast", "trainer.progress=false", "device=cpu", "trainer.max_steps=4", "trainer.eval_every=4",
          "trainer.checkpoint_every=4"]


@pytest.mark.slow
def test_prepare_then_run_on_a_mixture(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    Dataset.from_dict({"text": [d.upper() for d in DOCS]}).to_parquet(str(tmp_path / "b.parquet"))
    args = ["data=mix", "data.sources=[{path: a.jsonl, weight: 0.7}, {path: b.parquet, weight: 0.3}]",
            "data.shard_docs=100", "data.num_proc=2", f"cache_dir={tmp_path / 'cache'}"]
    prepared = run_cli("llmlab.prepare", args, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert "2 process(es)" in prepared.stderr and "a.jsonl: 297 train / 3 validation documents" in prepared.stdout
    ran = run_cli("llmlab.run", [*args, *HF_RUN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "tokenizing" not in ran.stderr  # prepared already: only verified
    assert "mixture: a.jsonl 0.700" in ran.stdout
    stats = json.loads((tmp_path / "run" / "dataset_stats.json").read_text())
    assert [s["share"] for s in stats["sources"]] == [0.7, 0.3]
    assert all((Path(s["shards"]) / "dataset_stats.json").is_file() for s in stats["sources"])


@pytest.mark.slow
def test_a_run_on_a_saved_dataset_trains(tmp_path):
    Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"))
    cfg = compose_config([*HF_RUN, "data=hf", f"data.path={tmp_path / 'saved'}", "data.num_proc=1",
                          "data.val_fraction=0.1",
                          f"cache_dir={tmp_path / 'cache'}"])
    cfg.out_dir = str(tmp_path / "run")
    result = Run(to_dataclass(cfg)).execute()
    assert result.status == "completed"
    stats = json.loads((tmp_path / "run" / "dataset_stats.json").read_text())
    assert stats["sources"][0]["train_documents"] == 270 and stats["unigram_loss"] > stats["bigram_loss"]


@pytest.mark.slow
def test_prepare_refuses_data_that_needs_no_preparing(tmp_path):
    done = run_cli("llmlab.prepare", ["data=synthetic"], cwd=REPO)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: data=synthetic: python -m llmlab.prepare")
