"""Export to Hugging Face transformers: the exported directory loads with AutoModelForCausalLM and computes
the same logits and the same greedy continuation as the llmlab model it came from. Everything is offline."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, run_config
from transformers import AutoModelForCausalLM

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.export import ExportConfig, export_run
from llmlab.interop.hf_export import hf_family, to_hf
from llmlab.load import load_trained
from llmlab.model.generation import SamplingConfig, generate
from llmlab.model.transformer import Transformer
from llmlab.runner import Run

VARIANTS = {
    "llama": {}, "llama-gqa": {"n_kv_heads": 2}, "llama-mqa-untied-bias": {"n_kv_heads": 1, "tie_embeddings": False,
                                                                         "bias": True},
    "gpt2": {"positions": "learned", "norm": "layernorm", "mlp": "gelu"},
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

    model, tokenizer, _ = load_trained(tmp_path / "run")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([[tokenizer.eos_id, *tokenizer.encode("Dubo and ")]])
    ours = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=0.0), torch.Generator())
    # an explicit mask: the prompt starts with id 0, which generate would otherwise take for padding
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert ours.tolist() == theirs.tolist()

    again = run_cli("llmlab.export", [f"run={tmp_path / 'run'}", f"out={out}"], cwd=tmp_path)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr  # never replaced by accident
    export_run(ExportConfig(run=str(tmp_path / "run"), out=str(out), overwrite=True))


def test_export_of_a_gpt2_style_run(tmp_path):
    Run(run_config(tmp_path, ["arch=gpt2", "trainer.max_steps=2", "trainer.checkpoint_every=2"])).execute()
    out = export_run(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / "exported")))
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    model, _, _ = load_trained(tmp_path / "run")
    ids = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.context_length))
    with torch.no_grad():
        diff = (model(ids) - AutoModelForCausalLM.from_pretrained(out)(ids).logits).abs().max().item()
    assert diff < 1e-5


