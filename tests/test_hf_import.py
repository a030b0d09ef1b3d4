"""`model=hf model.path=DIR`: a local transformers model directory (tiny random models built offline) trains,
resumes, exports and is analysed as an llmlab model with its own tokenizer; a missing or malformed directory
is one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, run_config
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llmlab.analyze import AnalyzeConfig, analyze
from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.tokenizers import ByteTokenizer, load_tokenizer
from llmlab.interop.hf_import import load_pretrained_weights, pretrained_tokenizer, resolve_model_config
from llmlab.interop.hf_tokenizer import save_hf_tokenizer
from llmlab.model.transformer import Transformer
from llmlab.runner import Run

VOCAB = 260  # the byte tokenizer's 257 ids and a few spare embeddings, as real models often have


def tiny_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                           bos_token_id=256, eos_token_id=256))
    else:
        sizes = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     bos_token_id=256, eos_token_id=256)
        model = (LlamaForCausalLM(LlamaConfig(**sizes)) if kind == "llama"
                 else Qwen2ForCausalLM(Qwen2Config(**sizes, tie_word_embeddings=False)))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict:
    """A transformers model directory per family: config.json, model.safetensors and a byte-level tokenizer."""
    dirs = {}
    for kind in ("gpt2", "llama", "qwen2"):
        directory = tmp_path_factory.mktemp(kind)
        tiny_model(kind).save_pretrained(directory)
        save_hf_tokenizer(ByteTokenizer(), directory)
        dirs[kind] = directory
    return dirs


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_a_model_directory_gives_the_same_logits(model_dirs, kind):
    """Through the directory (config.json + safetensors), with a run context shorter than the model's 64."""
    cfg = resolve_model_config(ModelConfig(name="hf", path=str(model_dirs[kind]), context_length=24))
    ours = Transformer.uninitialized(cfg)
    load_pretrained_weights(ours, cfg)
    theirs = AutoModelForCausalLM.from_pretrained(model_dirs[kind]).eval()
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        assert (ours.eval()(ids) - theirs(ids).logits).abs().max().item() < 1e-5


def test_the_tokenizer_never_makes_eos_from_text(model_dirs):
    tok = pretrained_tokenizer(ModelConfig(path=str(model_dirs["gpt2"])))
    assert tok.eos_id == 256 and tok.kind == "hf"
    text = f"a{tok.hf_tokenizer.eos_token}b é"
    assert tok.encode(text) == list(text.encode()) and tok.decode(tok.encode(text)) == text


@pytest.mark.slow
def test_a_run_trains_resumes_and_exports_an_imported_gpt2(model_dirs, tmp_path):
    common = ["model=hf", f"model.path={model_dirs['gpt2']}", "trainer.checkpoint_every=4"]
    run = Run(run_config(tmp_path, [*common, "trainer.max_steps=4"]))
    assert run.cfg.model.n_layers == 2 and run.cfg.model.positions == "learned"  # the directory's, not tiny's
    first = run.execute()
    assert first.status == "completed"
    assert load_tokenizer(tmp_path / "run" / "tokenizer").kind == "hf"
    resumed = Run(run_config(tmp_path, [*common, "trainer.max_steps=8", "trainer.allow_config_change=true"]))
    assert resumed.execute().steps == 8
    out = tmp_path / "exported"
    done = run_cli("llmlab.export", [f"run={tmp_path / 'run'}", f"out={out}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "llmlab_export.json").read_text())
    assert manifest["family"] == "gpt2" and manifest["tokenizer"]["kind"] == "hf"


def test_analyze_an_imported_model_writes_the_documented_layout(model_dirs, tmp_path):
    cfg = AnalyzeConfig(model=ModelConfig(name="hf", path=str(model_dirs["llama"]), context_length=32),
                        text="Some text to look at.", layers=[1], no_plots=True, out=str(tmp_path / "a"))
    out = analyze(cfg)
    record = json.loads((out / "distribution" / "step_0" / "layer_statistics.json").read_text())
    assert (out / "attention" / "step_0" / "statistics.json").is_file()
    # gradients of the chosen block only: the others (embeddings included) never hold any
    assert record["gradients"] and all(name.startswith("blocks.1.") for name in record["gradients"])
    assert {n.split(".")[1] for n in record["weights"]} == {"1"}


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing", "no such directory (model.local_files_only=true: nothing is downloaded"),
    (lambda d: d, "no config.json in it; expected a transformers model directory"),
])
def test_missing_directories_are_one_line(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_model_config(ModelConfig(name="hf", path=str(make(tmp_path))))


def test_malformed_directories_are_one_line(model_dirs, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model.path=.*: cannot read its config"):
        resolve_model_config(ModelConfig(name="hf", path=str(tmp_path)))
    (tmp_path / "config.json").write_text((model_dirs["llama"] / "config.json").read_text())
    cfg = resolve_model_config(ModelConfig(name="hf", path=str(tmp_path), context_length=32))
    with pytest.raises(ConfigError, match=r"cannot load its weights .* expected model.safetensors"):
        load_pretrained_weights(Transformer.uninitialized(cfg), cfg)
    with pytest.raises(ConfigError, match=r"model.context_length=128 exceeds the 64 positions"):
        resolve_model_config(ModelConfig(name="hf", path=str(tmp_path), context_length=128))


@pytest.mark.slow
def test_cli_missing_directory_is_exit_2(tmp_path):
    done = run_cli("llmlab.analyze", ["model=hf", f"model.path={tmp_path / 'nope'}", "text=hi"], cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: model.path=")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_tokenizer_the_model_cannot_hold_or_without_eos_is_one_line(model_dirs, tmp_path):
    import shutil

    from llmlab.data.tokenizers import CharTokenizer

    small = tmp_path / "small"
    shutil.copytree(model_dirs["llama"], small)
    save_hf_tokenizer(CharTokenizer("".join(map(chr, range(0x4E00, 0x4E00 + 300)))), small)  # 302 ids > 260
    cfg = run_config(tmp_path, ["model=hf", f"model.path={small}"])
    with pytest.raises(ConfigError, match=r"its tokenizer has 302 ids but the model only 260 embeddings"):
        Run(cfg).setup()
    config = json.loads((small / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (small / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="has no eos token; llmlab separates documents with it"):
        pretrained_tokenizer(ModelConfig(path=str(small)))
