"""A file that declares a model (a checkpoint manifest, a transformers config.json) is checked against its weight
file's header and the memory available before anything is built: a forged size, a damaged or hand-made
safetensors file, non-float weights, or more validation batches than the data holds are one ConfigError line,
quick, with no allocation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llmlab import weights
from llmlab.config.errors import ConfigError
from llmlab.config.schema import LoRAConfig, ModelConfig
from llmlab.data.chat_batches import fixed_batches
from llmlab.data.chat_template import Encoded
from llmlab.data.dataset import validation_batches
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.interop.hf import hf_tensors
from llmlab.interop.hf_import import load_pretrained_weights, resolve_model_config
from llmlab.interop.hf_tokenizer import save_hf_tokenizer
from llmlab.load import load_trained
from llmlab.model.lora import apply_lora, lora_state_dict
from llmlab.model.transformer import Transformer
from llmlab.train.checkpoint import save_checkpoint

VOCAB = ByteTokenizer().vocab_size
TINY = dict(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=VOCAB)
GB = 10**9


# ---- helpers -----------------------------------------------------------------------------------------------
def tiny_checkpoint(root: Path, lora: LoRAConfig | None = None, base: str | None = None, **model) -> Path:
    """A real checkpoint (save_checkpoint) of a tiny model under root/checkpoints, with root/tokenizer."""
    cfg = ModelConfig(**{**TINY, **model})
    torch.manual_seed(0)
    net = Transformer(cfg)
    if lora is not None:
        cfg = dataclasses.replace(cfg, lora=lora)
        apply_lora(net, lora.rank, lora.alpha, lora.dropout, lora.targets)
        net.cfg = cfg
        for name, p in net.named_parameters():
            if name.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.1)
    ByteTokenizer().save(root / "tokenizer")
    return save_checkpoint(root / "checkpoints", 1, net, {}, {"model": dataclasses.asdict(cfg), "base": base}).path


def edit_manifest(checkpoint: Path, **model) -> None:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["model"].update(model)
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def forge(checkpoint: Path, data: bytes) -> Path:
    """Replace model.safetensors by data and re-sign the manifest (sizes, sha256), as a forger would."""
    file = checkpoint / "model.safetensors"
    file.write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return file


def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.fixture
def memory(monkeypatch):
    """Pretend this much memory is available (bytes)."""
    def set_available(n: int | None) -> None:
        monkeypatch.setattr(weights, "available_memory", lambda: n)
    return set_available


def refused(call, match: str, within: float = 5.0, builds: bool = False) -> str:
    """call() raises one ConfigError line matching `match`, within `within` seconds and (builds=False) without
    constructing any Transformer but one-layer ones on the meta device (what llmlab.weights learns names, shapes
    and sizes from); the line."""
    one_layer = Transformer.__init__

    def meta_only(self, cfg):
        if torch.get_default_device().type != "meta" or cfg.n_layers != 1:
            raise AssertionError(f"a Transformer was built for {cfg}")
        one_layer(self, cfg)

    def no_model(cls, cfg):
        raise AssertionError(f"a Transformer was built for {cfg}")

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ConfigError, match=match) as info:
        if not builds:
            patch.setattr(Transformer, "__init__", meta_only)
            patch.setattr(Transformer, "uninitialized", classmethod(no_model))
        call()
    assert time.perf_counter() - start < within
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---- the declared model, computed from its config, is the model -------------------------------------------
CONFIGS = [
    dict(TINY),
    dict(TINY, positions="learned", norm="layernorm", mlp="gelu", bias=True),
    dict(TINY, tie_embeddings=False, n_kv_heads=2, d_ff=40),
    dict(TINY, positions="learned", norm="layernorm", mlp="swiglu", bias=False, n_layers=3, context_length=24),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_the_tensors_computed_from_a_config_are_the_models(kwargs):
    cfg = ModelConfig(**kwargs)
    with torch.device("meta"):
        model = Transformer(cfg)
    state = model.state_dict()
    expected = list(weights.model_tensors(cfg))
    names = [n for e in expected for n in e.names]
    assert sorted(names) == sorted(state)
    assert [e.names[0] for e in expected] == [n for n in state if n in {e.names[0] for e in expected}]
    assert all(tuple(state[n].shape) == e.shape for e in expected for n in e.names)
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert weights.parameter_count(cfg) == count


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["all"], ["blocks.1.mlp.down_proj", "attn.k_proj"]])
def test_the_adapters_computed_from_a_config_are_apply_loras(targets):
    cfg = ModelConfig(**TINY, lora=LoRAConfig(rank=3, targets=targets))
    with torch.device("meta"):
        model = Transformer(cfg)
        apply_lora(model, 3, 8.0, 0.0, targets)
    adapters = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    # every adapter apply_lora may add (those of targets=all), none required: which ones it added is checked where
    # the adapters load; and only those of the layers asked for
    possible = {e.names[0]: e.shape for e in weights.model_tensors(cfg, adapters=True)}
    assert adapters.items() <= possible.items()
    assert not any(e.required for e in weights.model_tensors(cfg, adapters=True))
    with torch.device("meta"):
        every = Transformer(cfg)
        apply_lora(every, 3, 8.0, 0.0, ["all"])
    assert list(possible) == list(lora_state_dict(every))
    assert {e.names[0] for e in weights.model_tensors(cfg, adapters=True, layers=[1])} == {
        k for k in possible if k.startswith("blocks.1.")}
    assert list(weights.model_tensors(cfg)) == list(weights.model_tensors(dataclasses.replace(cfg, lora=LoRAConfig())))
    # the memory bound counts at most every block linear's adapters
    plain = weights.parameter_count(dataclasses.replace(cfg, lora=LoRAConfig()))
    assert plain + sum(map(np.prod, adapters.values())) <= weights.parameter_count(cfg)


def hf_model(kind: str, tied: bool = True):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          tie_word_embeddings=tied, bos_token_id=256, eos_token_id=256))
    sizes = dict(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied, bos_token_id=256,
                 eos_token_id=256)
    return LlamaForCausalLM(LlamaConfig(**sizes)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**sizes))


def hf_dir(root: Path, kind: str, tied: bool = True, **save) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    hf_model(kind, tied).save_pretrained(root, **save)
    save_hf_tokenizer(ByteTokenizer(), root)
    return root


@pytest.mark.parametrize("kind,tied", [("gpt2", True), ("gpt2", False), ("llama", True), ("llama", False),
                                       ("qwen2", False)])
def test_the_tensors_computed_from_a_config_json_are_the_saved_ones(tmp_path, kind, tied):
    directory = hf_dir(tmp_path, kind, tied)
    cfg = ModelConfig(name="hf", path=str(directory), context_length=24)
    arch = resolve_model_config(cfg)  # passes the check
    saved = load_file(directory / "model.safetensors")
    expected = list(hf_tensors(dataclasses.replace(arch, context_length=64)))
    required = {e.names[0] for e in expected if e.required}
    assert required <= set(saved)
    shapes = {n: e.shape for e in expected for n in e.names}
    assert all(tuple(t.shape) == shapes[n] for n, t in saved.items())
    model = Transformer.uninitialized(arch)
    load_pretrained_weights(model, cfg)
    assert tuple(model.rope_cos.shape if arch.positions == "rope" else model.pos_emb.weight.shape)[0] == 24


def test_a_sharded_directory_and_legacy_gpt2_names_pass(tmp_path):
    sharded = hf_dir(tmp_path / "sharded", "llama", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    cfg = ModelConfig(name="hf", path=str(sharded), context_length=24)
    model = Transformer.uninitialized(resolve_model_config(cfg))
    load_pretrained_weights(model, cfg)
    # an old hub GPT-2: no "transformer." prefix, and the attention mask buffers saved beside the weights
    legacy = hf_dir(tmp_path / "legacy", "gpt2")
    state = {k.removeprefix("transformer."): v for k, v in load_file(legacy / "model.safetensors").items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(state, str(legacy / "model.safetensors"))
    cfg = ModelConfig(name="hf", path=str(legacy), context_length=None)
    model = Transformer.uninitialized(resolve_model_config(cfg))
    load_pretrained_weights(model, cfg)
    assert torch.equal(model.tok_emb.weight, state["wte.weight"])


# ---- checkpoint manifests ----------------------------------------------------------------------------------
def test_a_checkpoint_loads_with_tables_of_its_context(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    model, _, found = load_trained(checkpoint)
    assert found == checkpoint and model.rope_cos.shape == (16, 4) and model.rope_sin.shape == (16, 4)


def test_a_manifest_wider_and_deeper_than_its_weights_names_the_first_mismatching_tensor(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    edit_manifest(checkpoint, d_model=8192, n_layers=64)
    message = refused(lambda: load_trained(checkpoint), "tensor lm_head.weight is")  # the tied embedding's stored name
    assert message == (f"checkpoint file {checkpoint / 'model.safetensors'}: tensor lm_head.weight is [{VOCAB}, 32], "
                       f"but the model in {checkpoint / 'manifest.json'} needs [{VOCAB}, 8192]")


def test_a_manifest_with_more_layers_than_its_weights_names_the_first_missing_tensor(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    edit_manifest(checkpoint, n_layers=10**7)  # enumerated lazily: stops at layer 2
    refused(lambda: load_trained(checkpoint),
            r"model.safetensors: no tensor blocks.2.attn_norm.weight, which the model in .*manifest.json "
            r"needs \(\[32\]\)")


def test_a_huge_context_length_is_refused_before_its_rope_tables(tmp_path, memory):
    checkpoint = tiny_checkpoint(tmp_path)
    edit_manifest(checkpoint, context_length=400_000_000)  # 12.8 GB of cos/sin tables (head_dim 8)
    memory(8 * GB)
    message = refused(lambda: load_trained(checkpoint), "needs 12.8 GB in fp32")
    assert message == (f"checkpoint {checkpoint / 'manifest.json'}: a model of model.n_layers=2, model.d_model=32, "
                       f"model.vocab_size={VOCAB}, model.context_length=400000000 needs 12.8 GB in fp32, more than "
                       "the 8.0 GB of memory available")


def test_a_model_that_does_not_fit_in_memory_is_refused(tmp_path, memory):
    checkpoint = tiny_checkpoint(tmp_path)
    memory(100_000)  # a real, matching checkpoint; 100 kB free
    refused(lambda: load_trained(checkpoint), r"needs 0.1 MB in fp32, more than the 0.1 MB of memory available")


@pytest.mark.parametrize("field,value,match", [
    ("context_length", 4e8, r"model.context_length: expected an integer or null, got 400000000.0"),
    ("d_model", "8192", r"model.d_model: expected an integer, got '8192'"),
    ("vocab_size", None, r"model.vocab_size must be a positive integer, got None"),
    ("n_heads", 5, r"model.d_model=32 must be divisible by model.n_heads=5"),
    ("lora", {"rank": "8"}, r"model.lora.rank: expected an integer, got '8'"),
])
def test_a_mistyped_manifest_is_one_line(tmp_path, field, value, match):
    checkpoint = tiny_checkpoint(tmp_path)
    edit_manifest(checkpoint, **{field: value})
    message = refused(lambda: load_trained(checkpoint), match)
    assert message.startswith(f"checkpoint {checkpoint / 'manifest.json'}: ")


# ---- hand-written safetensors files ------------------------------------------------------------------------
# each refused by safetensors' own header validation; the reason in parentheses is its message
F32_4x4 = {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}
BAD_FILES = {
    "empty": (b"", "header too small"),
    "length past the end": (safetensors_bytes(F32_4x4, bytes(64), length=1_000_000), "invalid header length"),
    "length over 100 MB": (safetensors_bytes(F32_4x4, bytes(64), length=10**12), "header too large"),
    "not JSON": (struct.pack("<Q", 5) + b"{{{{{", "invalid JSON in header"),
    "not an object": (safetensors_bytes([1, 2]), "invalid JSON in header: invalid type: sequence"),
    "offsets past the end": (safetensors_bytes({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 10**9]}},
                                               bytes(64)), "invalid shape, data type, or offset for tensor"),
    "shape larger than its bytes": (safetensors_bytes({"a": {"dtype": "F32", "shape": [10**5, 10**5],
                                                             "data_offsets": [0, 64]}}, bytes(64)),
                                    "invalid shape, data type, or offset for tensor"),
    "unknown dtype": (safetensors_bytes({"a": {"dtype": "F33", "shape": [4, 4], "data_offsets": [0, 64]}}, bytes(64)),
                      "unknown variant `F33`"),
    "negative shape": (safetensors_bytes({"a": {"dtype": "F32", "shape": [-4, -4], "data_offsets": [0, 64]}},
                                         bytes(64)), "invalid value: integer `-4`, expected usize"),
    "a gap": (safetensors_bytes({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [8, 72]}}, bytes(72)),
              "invalid offset for tensor `a`"),
    "trailing bytes": (safetensors_bytes(F32_4x4, bytes(100)), "incomplete metadata, file not fully covered"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_malformed_safetensors_file_is_one_line(tmp_path, case):
    data, match = BAD_FILES[case]
    file = tmp_path / "x.safetensors"
    file.write_bytes(data)
    message = refused(lambda: weights.read_header(file, "checkpoint file "), match)
    assert message.startswith(f"checkpoint file {file} is not a valid safetensors file (")


def test_a_well_formed_file_reads_without_loading(tmp_path):
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(8, dtype=torch.bfloat16)}, str(tmp_path / "x.safetensors"))
    found = weights.read_header(tmp_path / "x.safetensors")
    assert found == {"a": weights.TensorInfo("F32", (4, 4), tmp_path / "x.safetensors"),
                     "b": weights.TensorInfo("BF16", (8,), tmp_path / "x.safetensors")}
    refused(lambda: weights.read_header(tmp_path / "missing.safetensors"),
            r"missing.safetensors cannot be read \(No such file")


def test_a_truncated_safetensors_file_is_one_line(tmp_path):
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(8)}, str(tmp_path / "x.safetensors"))
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-10])
    refused(lambda: weights.read_header(tmp_path / "x.safetensors"), r"\(.*incomplete metadata")
    (tmp_path / "x.safetensors").write_bytes(data[:20])
    refused(lambda: weights.read_header(tmp_path / "x.safetensors"), r"\(.*invalid header length")


@pytest.mark.parametrize("case", ["length past the end", "length over 100 MB", "offsets past the end",
                                  "trailing bytes"])
def test_a_forged_checkpoint_with_a_malformed_file_is_one_line(tmp_path, case):
    checkpoint = tiny_checkpoint(tmp_path)
    file = forge(checkpoint, BAD_FILES[case][0])
    refused(lambda: load_trained(checkpoint), f"^checkpoint file {file} is not a valid safetensors file \\(")


def test_a_truncated_checkpoint_file_is_one_line_forged_or_not(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    file = checkpoint / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100])
    refused(lambda: load_trained(checkpoint), f"checkpoint file {file} is truncated")  # the manifest's size
    forge(checkpoint, data[:-100])
    refused(lambda: load_trained(checkpoint),
            f"checkpoint file {file} is not a valid safetensors file \\(.*incomplete metadata")


@pytest.mark.parametrize("dtype,name", [(torch.int8, "I8"), (torch.int64, "I64")])
def test_integer_weights_in_a_checkpoint_are_refused(tmp_path, dtype, name):
    checkpoint = tiny_checkpoint(tmp_path)
    state = load_file(checkpoint / "model.safetensors")
    state["blocks.0.attn.q_proj.weight"] = state["blocks.0.attn.q_proj.weight"].to(dtype)
    save_file(state, str(tmp_path / "int.safetensors"))
    file = forge(checkpoint, (tmp_path / "int.safetensors").read_bytes())
    message = refused(lambda: load_trained(checkpoint), "expected floating-point weights")
    assert message == (f"checkpoint file {file}: tensor blocks.0.attn.q_proj.weight is {name}; expected "
                       "floating-point weights (F32, BF16, F16, F64)")


def test_a_tensor_the_model_does_not_have_is_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    state = load_file(checkpoint / "model.safetensors")
    save_file({**state, "blocks.9.attn.q_proj.weight": torch.zeros(2, 2)}, str(tmp_path / "more.safetensors"))
    forge(checkpoint, (tmp_path / "more.safetensors").read_bytes())
    refused(lambda: load_trained(checkpoint), r"tensor blocks.9.attn.q_proj.weight is not part of the model in")


# ---- LoRA: the adapters here, the base where it is loaded --------------------------------------------------
@pytest.fixture
def lora_pair(tmp_path) -> tuple[Path, Path]:
    base = tiny_checkpoint(tmp_path / "base")
    adapted = tiny_checkpoint(tmp_path / "lora", lora=LoRAConfig(rank=4, targets=["q_proj", "v_proj"]),
                              base=str(base))
    return base, adapted


def test_a_lora_checkpoint_loads(lora_pair):
    base, adapted = lora_pair
    model, _, _ = load_trained(adapted)
    expected = load_file(adapted / "model.safetensors")
    state = model.state_dict()
    assert expected and all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("edit,match", [
    ({"lora": {"rank": 10**9, "targets": ["q_proj", "v_proj"]}},
     r"tensor blocks.0.attn.q_proj.lora_A is \[4, 32\], but the model in .*lora.*manifest.json "
     r"needs \[1000000000, 32\]"),
    ({"d_model": 8192}, r"tensor blocks.0.attn.q_proj.lora_A is \[4, 32\], but .* needs \[4, 8192\]"),
    ({"vocab_size": 10**12}, r"model.vocab_size=1000000000000, .* in fp32, more than the"),
    ({"n_layers": 10**7}, r"model.n_layers=10000000, .* in fp32, more than the"),  # the adapters' 2 layers checked
])
def test_a_forged_lora_manifest_is_refused_before_its_base_loads(lora_pair, memory, edit, match):
    _, adapted = lora_pair
    edit_manifest(adapted, **edit)
    memory(64 * GB)
    refused(lambda: load_trained(adapted), match)


def test_a_forged_base_is_refused_where_it_is_loaded(lora_pair):
    base, adapted = lora_pair
    edit_manifest(base, d_model=8192, n_layers=64)
    refused(lambda: load_trained(adapted),
            rf"checkpoint {adapted} adapts {base}, which cannot be loaded: checkpoint file .*: tensor lm_head.weight "
            r"is \[\d+, 32\], but .* needs \[\d+, 8192\]")


def test_a_base_of_another_architecture_is_refused(lora_pair):
    base, adapted = lora_pair
    edit_manifest(adapted, rope_theta=500000.0)
    refused(lambda: load_trained(adapted), builds=True,
            match=r"a model of another architecture \(model.rope_theta: 500000.0 here vs 10000.0 there\)")


# ---- model=hf: config.json against the directory's weights and the memory ----------------------------------
HUGE = dict(hidden_size=65536, num_hidden_layers=1000, num_attention_heads=512, num_key_value_heads=512,
            head_dim=128, intermediate_size=65536 * 3)


def hf_config(directory: Path) -> ModelConfig:
    return ModelConfig(name="hf", path=str(directory), context_length=None)  # the directory's own positions


def swap_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    if "layer_types" in config:  # Qwen2 lists one per layer
        config["layer_types"] = config["layer_types"][:1] * config["num_hidden_layers"]
    (directory / "config.json").write_text(json.dumps(config))


def test_a_huge_config_json_beside_small_weights_names_the_first_mismatching_tensor(tmp_path):
    directory = hf_dir(tmp_path, "llama")
    swap_config(directory, **HUGE)
    message = refused(lambda: resolve_model_config(hf_config(directory)), "needs")
    assert message == (f"model.path={directory}: {directory / 'model.safetensors'}: tensor model.embed_tokens.weight "
                       f"is [260, 64], but {directory / 'config.json'} needs [260, 65536]")


def test_a_huge_config_json_without_weights_is_refused_by_memory(tmp_path, memory):
    directory = hf_dir(tmp_path, "llama")
    (directory / "model.safetensors").unlink()
    swap_config(directory, **HUGE)
    memory(64 * GB)
    message = refused(lambda: resolve_model_config(hf_config(directory)), "in fp32")
    assert message.startswith(f"model.path={directory}: a model of model.n_layers=1000, model.d_model=65536, "
                              "model.vocab_size=260, model.context_length=64 needs ")
    assert message.endswith(" GB in fp32, more than the 64.0 GB of memory available")


def test_a_config_json_with_more_layers_than_its_weights_is_refused(tmp_path):
    directory = hf_dir(tmp_path, "qwen2", tied=False)
    swap_config(directory, num_hidden_layers=3)
    refused(lambda: resolve_model_config(hf_config(directory)),
            r"model.safetensors: no tensor model.layers.2.input_layernorm.weight, which .*config.json needs \(\[64\]\)")


def test_integer_or_malformed_weights_in_a_model_directory_are_one_line(tmp_path):
    directory = hf_dir(tmp_path, "llama")
    cfg = ModelConfig(name="hf", path=str(directory), context_length=24)
    state = load_file(directory / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"].to(torch.int8)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    refused(lambda: resolve_model_config(cfg), r"tensor model.layers.1.mlp.up_proj.weight is I8; expected floating")
    (directory / "model.safetensors").write_bytes(BAD_FILES["length past the end"][0])
    refused(lambda: resolve_model_config(cfg), f"{directory / 'model.safetensors'} is not a valid safetensors file")


def test_a_broken_file_is_one_line_from_load_pretrained_weights_too(tmp_path):
    directory = hf_dir(tmp_path, "llama")
    cfg = ModelConfig(name="hf", path=str(directory), context_length=24)
    model = Transformer.uninitialized(resolve_model_config(cfg))
    (directory / "model.safetensors").write_bytes(BAD_FILES["offsets past the end"][0])  # changed after resolving
    refused(lambda: load_pretrained_weights(model, cfg), "is not a valid safetensors file", builds=True)


def test_an_index_naming_a_missing_shard_is_one_line(tmp_path):
    directory = hf_dir(tmp_path, "llama", max_shard_size="40KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: resolve_model_config(ModelConfig(name="hf", path=str(directory), context_length=24)),
            r"model.safetensors.index.json names '../elsewhere.safetensors', which is not a file in")


# ---- validation batches ------------------------------------------------------------------------------------
def old_starts(n_tokens: int, batch_size: int, seq_len: int, n_batches: int) -> list[int]:
    return np.linspace(0, n_tokens - seq_len - 1, n_batches * batch_size).astype(np.int64).tolist()


def test_more_eval_batches_than_the_data_holds_are_bounded_quickly_with_one_warning(capsys):
    tokens = np.arange(3552, dtype=np.uint16)  # the test suite's validation stream: 107 windows of 33
    start = time.perf_counter()
    batches = validation_batches(tokens, 8, 32, 100_000)
    assert time.perf_counter() - start < 1.0
    assert len(batches) == 13 and all(len(b.input_ids) == 8 for b in batches)
    starts = [int(b.input_ids[i, 0]) for b in batches for i in range(8)]
    assert starts == old_starts(3552, 8, 32, 13)  # what eval_batches=13 evaluates
    assert capsys.readouterr().err == (
        "warning: trainer.eval_batches=100000 is more than the validation data can fill: its 3552 tokens hold 107 "
        "windows of model.context_length=32 (+1) without overlap; evaluating 13 batches of 8 (set "
        "trainer.eval_batches<=13, or give more validation data)\n")
    assert len(validation_batches(tokens, 8, 32, 14, warn=False)) == 13 and capsys.readouterr().err == ""


@pytest.mark.parametrize("n_tokens,batch_size,seq_len,n_batches", [
    (3552, 8, 32, 2), (3552, 8, 48, 2), (3552, 4, 32, 1), (88572, 32, 128, 8), (3552, 8, 32, 13),
    (100, 8, 32, 1),  # fewer windows than one batch: one batch of overlapping windows, as before
])
def test_eval_batches_within_the_bound_draw_the_same_windows_as_before(n_tokens, batch_size, seq_len, n_batches):
    tokens = np.arange(n_tokens, dtype=np.int64)
    batches = validation_batches(tokens, batch_size, seq_len, n_batches)
    starts = [int(b.input_ids[i, 0]) for b in batches for i in range(len(b.input_ids))]
    assert starts == old_starts(n_tokens, batch_size, seq_len, n_batches)


def test_a_short_stream_allows_one_batch_only(capsys):
    assert len(validation_batches(np.arange(100), 8, 32, 2)) == 1
    assert "its 100 tokens hold 3 windows of model.context_length=32 (+1) without overlap; evaluating 1 batch of 8 " \
           "(set trainer.eval_batches<=1" in capsys.readouterr().err


def test_chat_eval_batches_beyond_the_data_take_what_there_is():
    items = [(Encoded(list(range(n + 2)), [True] * (n + 2)),) for n in range(5)]
    start = time.perf_counter()
    batches = fixed_batches(items, 2, 0, 10**12)
    assert time.perf_counter() - start < 1.0
    assert [len(b.input_ids) for b in batches] == [2, 2, 1]


# ---- through the CLI, and under a hard memory limit --------------------------------------------------------
@pytest.mark.slow
def test_the_cli_prints_one_line_for_a_forged_checkpoint_and_one_warning_for_too_many_eval_batches(tmp_path,
                                                                                                       fast_args):
    checkpoint = tiny_checkpoint(tmp_path / "run")
    edit_manifest(checkpoint, d_model=8192, n_layers=64)
    done = run_cli("llmlab.generate", [f"run={tmp_path / 'run'}", "prompt=a"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint file ") and "lm_head.weight" in lines[0]
    done = run_cli("llmlab.run", [*fast_args, "trainer.eval_batches=100000", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if "trainer.eval_batches" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: trainer.eval_batches=100000 is more than"), warned


@pytest.mark.slow
def test_huge_declared_models_are_refused_under_a_hard_memory_limit(tmp_path):
    """Under RLIMIT_AS (what is mapped now + 1.5 GB) 12.8 GB of RoPE tables, a 206 GB hf model or a 200 GB manifest
    would fail to allocate with a traceback; each is one line instead."""
    context = tiny_checkpoint(tmp_path / "context")
    edit_manifest(context, context_length=400_000_000)
    wide = tiny_checkpoint(tmp_path / "wide")
    edit_manifest(wide, d_model=8192, n_layers=64)
    directory = hf_dir(tmp_path / "hf", "llama")
    (directory / "model.safetensors").unlink()
    swap_config(directory, **HUGE)
    script = textwrap.dedent(f"""
        import resource, sys
        from llmlab.config.errors import ConfigError
        from llmlab.config.schema import ModelConfig
        from llmlab.interop.hf_import import resolve_model_config
        from llmlab.load import load_trained
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 1_500_000_000, resource.RLIM_INFINITY))
        for call in (lambda: load_trained({str(context)!r}), lambda: load_trained({str(wide)!r}),
                     lambda: resolve_model_config(ModelConfig(name="hf", path={str(directory)!r},
                                                              context_length=None))):
            try:
                call()
            except ConfigError as e:
                print(e)
            else:
                sys.exit("loaded")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "context_length=400000000 needs 12.8 GB in fp32, more than the" in lines[0]
    assert "tensor lm_head.weight is" in lines[1]
    assert "model.d_model=65536" in lines[2] and "in fp32, more than the" in lines[2]
