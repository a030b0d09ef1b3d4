"""Hugging Face transformers interop, offline. Export: the exported directory loads with AutoModelForCausalLM and
computes the same logits and greedy continuation as the llmlab model. Import: tiny random Llama, Qwen2 and GPT-2
models built from their configs become llmlab models that compute the same logits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import run_cli, run_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.export import ExportConfig, export_run
from llmlab.interop.hf import config_from_hf, from_hf, hf_family, to_hf
from llmlab.load import load_trained
from llmlab.model.transformer import Transformer
from llmlab.runner import Run

VARIANTS = {
    "llama": {}, "llama-gqa": {"n_kv_heads": 2}, "llama-mqa-untied-bias": {"n_kv_heads": 1, "tie_embeddings": False,
                                                                         "bias": True},
    "gpt2": {"positions": "learned", "norm": "layernorm", "mlp": "gelu"},
    "gpt2-tanh": {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "gelu": "tanh"},
    "gpt2-untied-bias": {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "tie_embeddings": False,
                         "bias": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_logits_equal_llmlab_logits(tmp_path, variant):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=4, context_length=32, vocab_size=50,
                                    **VARIANTS[variant])).eval()
    for p in model.parameters():  # away from the init, so every tensor (biases, norms) matters
        torch.nn.init.normal_(p, std=0.2)
    to_hf(model).save_pretrained(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(loaded).__name__ == ("LlamaForCausalLM" if variant.startswith("llama") else "GPT2LMHeadModel")
    ids = torch.randint(0, 50, (3, 32))
    with torch.no_grad():
        ours, theirs = model(ids), loaded(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("overrides,message", [
    ({"norm": "layernorm"}, "model.norm=layernorm has no Hugging Face equivalent: Llama needs"),
    ({"positions": "learned", "norm": "layernorm", "mlp": "swiglu"}, "model.mlp=swiglu has no Hugging Face"),
    ({"positions": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_heads": 2}, "GPT-2 has no grouped-query"),
])
def test_mixes_without_a_transformers_class_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        hf_family(ModelConfig(n_layers=1, d_model=32, n_heads=4, vocab_size=10, **overrides))


@pytest.mark.slow
def test_a_trained_run_round_trips_through_the_cli_with_the_same_greedy_continuation(tmp_path):
    Run(run_config(tmp_path, ["trainer.max_steps=6", "trainer.checkpoint_every=6"])).execute()
    out = tmp_path / "exported"
    done = run_cli("llmlab.export", [f"run={tmp_path / 'run'}", f"out={out}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "export.log").exists()  # Hydra's job log goes to stdout, not into the working directory
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert json.loads((out / "llmlab_export.json").read_text())["checkpoint"].endswith("step_6")

    assert json.loads((out / "llmlab_export.json").read_text())["tokenizer"]["parity"] == "exact"  # char

    # the same greedy continuation as `python -m llmlab.generate`, through transformers alone
    shown = run_cli("llmlab.generate", [f"run={tmp_path / 'run'}", "prompt=Dubo and ", "temperature=0",
                                        "max_new_tokens=20"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    ours = shown.stdout.split("--- sample 1\n", 1)[1].rstrip("\n")
    hf, hf_tokenizer = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    inputs = hf_tokenizer("Dubo and ", return_tensors="pt")  # the tokenizer adds llmlab's bos itself
    theirs = hf.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert hf_tokenizer.decode(theirs[0], skip_special_tokens=True) == ours
    model, tokenizer, _ = load_trained(tmp_path / "run")
    assert inputs["input_ids"][0].tolist() == [tokenizer.eos_id, *tokenizer.encode("Dubo and ")]

    again = run_cli("llmlab.export", [f"run={tmp_path / 'run'}", f"out={out}"], cwd=tmp_path)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr  # never replaced by accident
    export_run(ExportConfig(run=str(tmp_path / "run"), out=str(out), overwrite=True))


@pytest.mark.slow
def test_export_of_a_gpt2_style_run(tmp_path):
    Run(run_config(tmp_path, ["arch=gpt2", "trainer.max_steps=2", "trainer.checkpoint_every=2"])).execute()
    out = export_run(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / "exported")))
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    model, _, _ = load_trained(tmp_path / "run")
    ids = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.context_length))
    with torch.no_grad():
        diff = (model(ids) - AutoModelForCausalLM.from_pretrained(out)(ids).logits).abs().max().item()
    assert diff < 1e-5




# ---- import -------------------------------------------------------------------------------------
def tiny_hf(kind: str, **extra):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sizes = dict(vocab_size=60, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**sizes, **extra}))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**sizes, **extra}))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                           bos_token_id=None, eos_token_id=None, **extra))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


# with head_dim 16 and original context 64, the frequency bands kept, interpolated and stretched all occur
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}), ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1, "rope_theta": 500.0}),
    ("llama", {"rope_parameters": LLAMA3_ROPE}),  # Llama 3.1/3.2's scaled RoPE
    ("qwen2", {"tie_word_embeddings": False}), ("gpt2", {}), ("gpt2", {"tie_word_embeddings": False}),
    ("gpt2", {"activation_function": "gelu"}), ("gpt2", {"activation_function": "gelu_pytorch_tanh"}),
])
def test_imported_models_compute_the_same_logits(kind, extra):
    torch.manual_seed(0)
    hf = tiny_hf(kind, **extra)
    ours = from_hf(hf)
    ids = torch.randint(0, 60, (2, 32))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-5


def test_export_then_import_gives_back_the_same_weights():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, context_length=32,
                                    vocab_size=50, bias=True, tie_embeddings=False))
    back = from_hf(to_hf(model)).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())


def test_scaled_rope_survives_export_and_import():
    cfg = ModelConfig(n_layers=1, d_model=64, n_heads=4, context_length=32, vocab_size=50, rope_theta=5e5,
                      rope_scaling="llama3", rope_factor=8.0, rope_original_context=16)
    hf = to_hf(Transformer(cfg))
    assert hf.config.rope_parameters["rope_type"] == "llama3"
    assert from_hf(hf).cfg == dataclasses.replace(cfg, name="hf-llama", d_ff=cfg.ffn_dim, n_kv_heads=4)


@pytest.mark.parametrize("gelu,activation", [("exact", "gelu"), ("tanh", "gelu_new")])
def test_each_gelu_is_exported_as_its_own_activation_and_imported_back(gelu, activation):
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, context_length=16, vocab_size=20, positions="learned",
                      norm="layernorm", mlp="gelu", gelu=gelu)
    hf = to_hf(Transformer(cfg))
    assert hf.config.activation_function == activation
    assert from_hf(hf).cfg.gelu == gelu


def test_configs_llmlab_cannot_hold_are_refused_by_name():
    with pytest.raises(ConfigError, match="rope_type=linear is not supported"):
        config_from_hf(tiny_hf("llama", rope_parameters={"rope_type": "linear", "rope_theta": 5e5,
                                                         "factor": 8.0}).config)
    with pytest.raises(ConfigError, match=r"head_dim=32 x 4 heads != hidden_size=64"):
        config_from_hf(tiny_hf("llama", head_dim=32).config)
    with pytest.raises(ConfigError, match="hidden_act=gelu is not supported; only silu"):
        config_from_hf(tiny_hf("llama", hidden_act="gelu").config)
    with pytest.raises(ConfigError, match="activation_function=relu is not supported"):
        config_from_hf(tiny_hf("gpt2", activation_function="relu").config)
    with pytest.raises(ConfigError, match="model_type='bert' is not supported"):
        config_from_hf(type("BertConfig", (), {"model_type": "bert"})())


@pytest.mark.slow
def test_the_benchmark_against_transformers_times_the_same_work(tmp_path):
    """A smoke run of `python -m llmlab.bench vs-transformers`: both models start from the same logits."""
    from llmlab.bench.__main__ import main as bench

    out = tmp_path / "vs.json"
    bench(["vs-transformers", "--sizes", "tiny", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    tiny = json.loads(out.read_text())["sizes"]["tiny"]
    assert tiny["max_logit_difference"] < 1e-5
    assert tiny["ratio"] == tiny["ms_per_step"]["llmlab"] / tiny["ms_per_step"]["transformers"] > 0


@pytest.mark.slow
def test_the_benchmark_against_gpt2_times_the_same_work_and_reports_mfu(tmp_path):
    from llmlab.bench.__main__ import main as bench

    out = tmp_path / "vs.json"
    bench(["vs-transformers", "--sizes", "tiny", "--arch", "gpt2", "--repeats", "1", "--warmup", "0",
           "--peak-flops", "1e12", "--out", str(out)])
    report = json.loads(out.read_text())
    tiny = report["sizes"]["tiny"]
    assert report["arch"] == "gpt2" and tiny["max_logit_difference"] < 1e-5
    assert 0 < tiny["mfu"]["llmlab"] < 1


def test_the_generation_benchmark_compares_the_same_tokens(tmp_path):
    """A smoke run of `python -m llmlab.bench generation`: cached, uncached and transformers agree token for token."""
    from llmlab.bench.__main__ import main as bench

    out = tmp_path / "gen.json"
    bench(["generation", "--batches", "2", "--prompt", "8", "--new", "8", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())["results"]["batch_2"]
    assert result["same_tokens_as_transformers"] and result["same_tokens_cached_and_not"]
    assert result["cache_speedup"] > 0 and result["vs_transformers"] > 0
