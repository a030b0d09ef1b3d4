"""llmlab models as Hugging Face `transformers` models: LlamaForCausalLM or GPT2LMHeadModel, no custom code.

A Llama-style model (RoPE, RMSNorm, SwiGLU, any n_kv_heads) maps one to one onto Llama's modules, including
the rotate-half RoPE layout. A GPT-2-style model (learned positions, LayerNorm, GELU) maps onto GPT-2, whose
attention is one fused Conv1D (weights stored as (in, out), the transpose of nn.Linear) and whose layers
always have biases (zeros stand in for the ones llmlab left out). Other mixes have no `transformers` class
and are refused, naming the option.
"""

from __future__ import annotations

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig

LLAMA_STYLE = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
GPT2_STYLE = {"positions": "learned", "norm": "layernorm", "mlp": "gelu"}


def hf_family(cfg: ModelConfig) -> str:
    """'llama' or 'gpt2'; ConfigError naming the options that fit neither."""
    for family, style in (("llama", LLAMA_STYLE), ("gpt2", GPT2_STYLE)):
        if all(getattr(cfg, k) == v for k, v in style.items()):
            if family == "gpt2" and cfg.kv_heads != cfg.n_heads:
                raise ConfigError(f"model.n_kv_heads={cfg.kv_heads}: GPT-2 has no grouped-query attention; "
                                  "export a Llama-style model or use n_kv_heads=n_heads")
            return family
    closest = LLAMA_STYLE if cfg.positions == "rope" else GPT2_STYLE
    odd = ", ".join(f"model.{k}={getattr(cfg, k)}" for k, v in closest.items() if getattr(cfg, k) != v)
    name = "Llama" if closest is LLAMA_STYLE else "GPT-2"
    raise ConfigError(f"{odd} has no Hugging Face equivalent: {name} needs "
                      + ", ".join(f"{k}={v}" for k, v in closest.items()))


def llama_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, hidden_act="silu",
        attention_bias=cfg.bias, mlp_bias=cfg.bias, tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def llama_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["final_norm.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    names = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight"}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for p in ("weight", "bias"):
            names[f"attn.{proj}.{p}"] = f"self_attn.{proj}.{p}"
    for proj in ("gate_proj", "up_proj", "down_proj"):
        for p in ("weight", "bias"):
            names[f"mlp.{proj}.{p}"] = f"mlp.{proj}.{p}"
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            if f"blocks.{i}.{ours}" in state:
                out[f"model.layers.{i}.{theirs}"] = state[f"blocks.{i}.{ours}"]
    return out


def gpt2_config(cfg: ModelConfig):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.ffn_dim, activation_function="gelu_new",  # the tanh approximation
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None,
    )


def gpt2_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    def bias_of(name: str, size: int) -> torch.Tensor:
        return state.get(name, torch.zeros(size))

    d = cfg.d_model
    out = {"transformer.wte.weight": state["tok_emb.weight"], "transformer.wpe.weight": state["pos_emb.weight"],
           "transformer.ln_f.weight": state["final_norm.weight"],
           "transformer.ln_f.bias": bias_of("final_norm.bias", d), "lm_head.weight": state["lm_head.weight"]}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for norm, ln in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[f"{theirs}{ln}.weight"] = state[f"{ours}{norm}.weight"]
            out[f"{theirs}{ln}.bias"] = bias_of(f"{ours}{norm}.bias", d)
        qkv = [f"{ours}attn.{p}_proj" for p in "qkv"]
        # Conv1D keeps weights as (in, out): the transpose of nn.Linear's (out, in)
        out[f"{theirs}attn.c_attn.weight"] = torch.cat([state[f"{n}.weight"] for n in qkv]).t()
        out[f"{theirs}attn.c_attn.bias"] = torch.cat([bias_of(f"{n}.bias", d) for n in qkv])
        linears = (("attn.o_proj", "attn.c_proj", d), ("mlp.up_proj", "mlp.c_fc", cfg.ffn_dim),
                   ("mlp.down_proj", "mlp.c_proj", d))
        for ours_name, theirs_name, size in linears:
            out[f"{theirs}{theirs_name}.weight"] = state[f"{ours}{ours_name}.weight"].t()
            out[f"{theirs}{theirs_name}.bias"] = bias_of(f"{ours}{ours_name}.bias", size)
    return out


def to_hf(model) -> torch.nn.Module:
    """A transformers LlamaForCausalLM or GPT2LMHeadModel holding model's weights (copies, fp32, eval mode)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    cfg = model.cfg
    family = hf_family(cfg)
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    if family == "llama":
        hf_model, mapped = LlamaForCausalLM(llama_config(cfg)), llama_state_dict(state, cfg)
    else:
        hf_model, mapped = GPT2LMHeadModel(gpt2_config(cfg)), gpt2_state_dict(state, cfg)
    if cfg.tie_embeddings:
        mapped.pop("lm_head.weight")  # one tensor, shared with the token embedding
    missing, unexpected = hf_model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export to {family}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf_model.eval()
