"""Smoke runs of `python -m llmlab.bench data` and `python -m llmlab.bench scaling` with the smallest settings."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.bench.__main__ import main as bench


@pytest.mark.slow
def test_data_benchmark_times_batches_against_steps_and_every_tokenizer(tmp_path):
    out = tmp_path / "data.json"
    bench(["data", "--sizes", "tiny", "--batch", "2", "--tokens", "100000", "--batches", "20", "--steps", "2",
           "--warmup", "0", "--text-mb", "0.2", "--train-mb", "0.1", "--sections", "batches", "tokenizers",
           "--out", str(out)])
    report = json.loads(out.read_text())
    tiny = report["batches"]["tiny"]
    assert (tiny["batch"], tiny["context_length"]) == (2, 128)
    assert tiny["data_ms_per_batch"] > 0 and tiny["step_ms"] > 0 and tiny["headroom"] > 0
    assert 0.19 < report["text_mb"] <= 0.2
    assert set(report["tokenizers"]) == {"char", "byte", "bpe", "unigram"}
    for kind, r in report["tokenizers"].items():
        assert r["train_s"] >= 0 and r["encode_s"] > 0 and r["tokens"] > 0, kind
        assert r["round_trip"], kind
    byte = report["tokenizers"]["byte"]
    assert byte["tokens"] == round(report["text_mb"] * 1e6) + report["documents"]  # one per ASCII char, one eos per doc
    assert report["tokenizers"]["bpe"]["tokens"] < byte["tokens"]  # learnt pieces compress
    assert report["tokenizers"]["unigram"]["trained_on_mb"] <= 0.1 < report["tokenizers"]["char"]["trained_on_mb"]


@pytest.mark.slow
def test_data_benchmark_tokenizes_in_parallel_and_measures_the_memory_of_prepare_and_train(tmp_path):
    out = tmp_path / "data.json"
    bench(["data", "--sections", "parallel", "memory", "--parallel-kinds", "byte", "--parallel-mb", "0.5",
           "--processes", "2", "--memory-mb", "0.8", "--train-steps", "2", "--tmp", str(tmp_path), "--out", str(out)])
    report = json.loads(out.read_text())
    byte = report["parallel_tokenization"]["byte"]
    assert byte["1_processes"]["mb_per_s"] > 0 and byte["2_processes"]["mb_per_s"] > 0 and byte["speedup"] > 0
    # 0.8 MB: about 150 rows of ~5 KB, enough for one validation row in every hundred
    run = report["prepare_memory"]["0.8"]
    assert run["shards_mb"] > 1.5  # uint16: two bytes per character
    assert 0 < run["prepare"]["peak_anon_rss_mb"] <= run["prepare"]["peak_rss_mb"] < 2048
    assert run["train"]["peak_rss_mb"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]  # the corpora and shards are deleted


@pytest.mark.slow
def test_scaling_benchmark_measures_each_size_in_its_own_process(tmp_path):
    out = tmp_path / "scaling.json"
    bench(["scaling", "--sizes", "tiny", "--batch", "2", "--steps", "2", "--warmup", "0", "--out", str(out)])
    tiny = json.loads(out.read_text())["sizes"]["tiny"]
    assert (tiny["batch"], tiny["context_length"], tiny["vocab_size"]) == (2, 128, 256)
    assert 0.5e6 < tiny["params"] < 2e6
    assert tiny["tokens_per_s"] > 0 and len(tiny["step_ms_all"]) == 2
    assert tiny["peak_mem_mb"] > tiny["model_mem_mb"] > 0


def test_gpt2_124m_preset_has_gpt2s_parameter_count():
    from llmlab.bench.scaling import model_config
    from llmlab.model.transformer import Transformer

    cfg = model_config("gpt2_124m", 50257, context_length=1024)
    assert (cfg.positions, cfg.norm, cfg.mlp, cfg.bias, cfg.tie_embeddings) == ("learned", "layernorm", "gelu",
                                                                                 True, True)
    with torch.device("meta"):  # shapes only, no memory
        assert Transformer(cfg).num_params() == 124_439_808  # GPT-2 small, tied embeddings
