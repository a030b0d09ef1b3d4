"""llmlab models as Hugging Face `transformers` models (LlamaForCausalLM or GPT2LMHeadModel, no custom code),
and `transformers` Llama, Qwen2 and GPT-2 models as llmlab models.

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
from llmlab.interop.hf_moe import (
    fuse_experts,
    hf_moe_config,
    moe_family,
    moe_fields,
    moe_layer_tensors,
    moe_names,
    split_experts,
)
from llmlab.weights import Expected

LLAMA_STYLE = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
GPT2_STYLE = {"positions": "learned", "norm": "layernorm", "mlp": "gelu"}
GPT2_ACTIVATION = {"exact": "gelu", "tanh": "gelu_new"}  # model.gelu -> GPT2Config.activation_function


def hf_family(cfg: ModelConfig) -> str:
    """'llama', 'gpt2', or for a mixture of experts 'mixtral' or 'qwen2_moe'; ConfigError naming the options that
    fit none."""
    if cfg.mlp == "none":
        raise ConfigError("model.mlp=none (attention-only blocks) has no Hugging Face equivalent: Llama and GPT-2 "
                          "blocks always have an MLP")
    extras = [f"model.{k}" for k in ("qk_norm", "value_embeddings", "logit_softcap") if getattr(cfg, k)]
    if cfg.mlp == "relu2":
        extras.append("model.mlp=relu2")
    if extras:
        raise ConfigError(f"{', '.join(extras)}: Llama and GPT-2 in transformers have no such option; export a model "
                          "trained without it")
    for family, style in (("llama", LLAMA_STYLE), ("gpt2", GPT2_STYLE)):
        if all(getattr(cfg, k) == v for k, v in style.items()):
            if cfg.moe.experts:
                if family == "gpt2":
                    raise ConfigError(f"model.moe.experts={cfg.moe.experts}: Mixtral and Qwen2-MoE are Llama "
                                      "style; a GPT-2-style mixture of experts has no transformers class")
                return moe_family(cfg)
            if family == "gpt2" and cfg.kv_heads != cfg.n_heads:
                raise ConfigError(f"model.n_kv_heads={cfg.kv_heads}: GPT-2 has no grouped-query attention; "
                                  "export a Llama-style model or use n_kv_heads=n_heads")
            return family
    closest = LLAMA_STYLE if cfg.positions == "rope" else GPT2_STYLE
    odd = ", ".join(f"model.{k}={getattr(cfg, k)}" for k, v in closest.items() if getattr(cfg, k) != v)
    name = "Llama" if closest is LLAMA_STYLE else "GPT-2"
    raise ConfigError(f"{odd} has no Hugging Face equivalent: {name} needs "
                      + ", ".join(f"{k}={v}" for k, v in closest.items()))


def llama_config(cfg: ModelConfig, family: str = "llama"):
    """LlamaConfig, or (family mixtral | qwen2_moe) that family's config with the same Llama-style fields."""
    from transformers import LlamaConfig

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope_parameters(cfg), hidden_act="silu", tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if family != "llama":
        return hf_moe_config(cfg, family, common)
    return LlamaConfig(**common, intermediate_size=cfg.ffn_dim, attention_bias=cfg.bias, mlp_bias=cfg.bias)


def rope_parameters(cfg: ModelConfig) -> dict:
    """transformers' rope_parameters for cfg's RoPE."""
    if cfg.rope_scaling == "none":
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
            "low_freq_factor": cfg.rope_low_freq_factor, "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_context}


def rope_fields(kind: str, hf_cfg) -> dict:
    """ModelConfig's rope_* fields from a transformers Llama or Qwen2 config."""
    rope = getattr(hf_cfg, "rope_parameters", None) or {"rope_type": "default",
                                                        "rope_theta": getattr(hf_cfg, "rope_theta", 1e4)}
    fields = {"rope_theta": float(rope["rope_theta"])}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "llama3":
        fields.update(rope_scaling="llama3", rope_factor=float(rope["factor"]),
                      rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_context=int(rope["original_max_position_embeddings"]))
    elif rope_type != "default":
        raise ConfigError(f"{kind}: rope_type={rope_type} is not supported; llmlab has default and llama3 RoPE")
    return fields


def llama_names(cfg: ModelConfig) -> dict[str, str]:
    """llmlab parameter name -> Llama's, for every parameter a model with cfg can have."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    per_layer = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight"}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for p in ("weight", "bias"):
            per_layer[f"attn.{proj}.{p}"] = f"self_attn.{proj}.{p}"
    for proj in ("gate_proj", "up_proj", "down_proj"):
        for p in ("weight", "bias"):
            per_layer[f"mlp.{proj}.{p}"] = f"mlp.{proj}.{p}"
    for i in range(cfg.n_layers):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in per_layer.items()})
    names.update(moe_names(cfg))  # a MoE block's router and shared experts (its experts are fused: fuse_experts)
    return names


def llama_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' in-memory state dict (Llama, Mixtral or Qwen2-MoE) from llmlab's."""
    return {**{theirs: state[ours] for ours, theirs in llama_names(cfg).items() if ours in state},
            **fuse_experts(state, cfg)}


def gpt2_config(cfg: ModelConfig):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.ffn_dim, activation_function=GPT2_ACTIVATION[cfg.gelu],
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
    """A transformers LlamaForCausalLM, GPT2LMHeadModel, MixtralForCausalLM or Qwen2MoeForCausalLM holding model's
    weights (copies, fp32, eval mode)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM

    cfg = model.cfg
    family = hf_family(cfg)
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    causal_lm = {"llama": LlamaForCausalLM, "mixtral": MixtralForCausalLM, "qwen2_moe": Qwen2MoeForCausalLM}
    if family in causal_lm:
        hf_model, mapped = causal_lm[family](llama_config(cfg, family)), llama_state_dict(state, cfg)
    else:
        hf_model, mapped = GPT2LMHeadModel(gpt2_config(cfg)), gpt2_state_dict(state, cfg)
    if cfg.tie_embeddings:
        mapped.pop("lm_head.weight")  # one tensor, shared with the token embedding
    missing, unexpected = hf_model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export to {family}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf_model.eval()


# ---- import --------------------------------------------------------------------------------------
def config_from_hf(hf_cfg) -> ModelConfig:
    """The llmlab ModelConfig of a transformers Llama, Qwen2 or GPT-2 config; ConfigError for what it cannot hold."""
    kind = hf_cfg.model_type
    if kind in ("llama", "qwen2", "mixtral", "qwen2_moe"):
        if hf_cfg.hidden_act != "silu":
            raise ConfigError(f"{kind}: hidden_act={hf_cfg.hidden_act} is not supported; only silu (SwiGLU)")
        head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
        if head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
            raise ConfigError(f"{kind}: head_dim={head_dim} x {hf_cfg.num_attention_heads} heads != hidden_size="
                              f"{hf_cfg.hidden_size}; llmlab needs d_model = n_heads x head_dim")
        # Qwen2 has biases on q, k and v only: llmlab's all-linears bias, with zeros where Qwen2 has none
        bias = kind == "qwen2" or bool(getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False)
                                       or getattr(hf_cfg, "qkv_bias", False))
        sizes = moe_fields(hf_cfg) if kind in ("mixtral", "qwen2_moe") else {"d_ff": hf_cfg.intermediate_size}
        return ModelConfig(
            name=f"hf-{kind}", n_layers=hf_cfg.num_hidden_layers, d_model=hf_cfg.hidden_size,
            n_heads=hf_cfg.num_attention_heads, n_kv_heads=hf_cfg.num_key_value_heads,
            **sizes, context_length=hf_cfg.max_position_embeddings,
            vocab_size=hf_cfg.vocab_size, positions="rope", norm="rmsnorm", mlp="swiglu",
            tie_embeddings=bool(hf_cfg.tie_word_embeddings), bias=bias, norm_eps=hf_cfg.rms_norm_eps,
            **rope_fields(kind, hf_cfg))
    if kind == "gpt2":
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}.get(hf_cfg.activation_function)
        if gelu is None:
            raise ConfigError(f"gpt2: activation_function={hf_cfg.activation_function} is not supported; "
                              "only gelu (exact), gelu_new or gelu_pytorch_tanh (the tanh approximation)")
        return ModelConfig(
            name="hf-gpt2", n_layers=hf_cfg.n_layer, d_model=hf_cfg.n_embd, n_heads=hf_cfg.n_head,
            d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd, context_length=hf_cfg.n_positions,
            vocab_size=hf_cfg.vocab_size, positions="learned", norm="layernorm", mlp="gelu",
            gelu=gelu, tie_embeddings=bool(hf_cfg.tie_word_embeddings), bias=True, norm_eps=hf_cfg.layer_norm_epsilon)
    raise ConfigError(f"model_type={kind!r} is not supported: llmlab imports llama, qwen2, mixtral, qwen2_moe and "
                      "gpt2")


def hf_tensors(cfg: ModelConfig):
    """The tensors a transformers model directory of config_from_hf's cfg must hold, as llmlab.weights.Expected:
    names as saved by save_pretrained (or without the base model's prefix, as older checkpoints have them),
    their shapes, and whether llmlab needs them (biases it lacks become zeros, a tied head is the embedding)."""
    d, v = cfg.d_model, cfg.vocab_size

    def one(name: str, shape: tuple[int, ...], base: str, required: bool = True) -> Expected:
        names = (name, name.removeprefix(base)) if name.startswith(base) else (name,)
        return Expected(names, shape, required)

    if cfg.positions == "rope":  # Llama, Qwen2
        q, kv, f, m = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_dim, "model."
        yield one("model.embed_tokens.weight", (v, d), m)
        for i in range(cfg.n_layers):
            layer = f"model.layers.{i}."
            yield one(f"{layer}input_layernorm.weight", (d,), m)
            for proj, out, n_in in (("q_proj", q, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, q)):
                yield one(f"{layer}self_attn.{proj}.weight", (out, n_in), m)
                yield one(f"{layer}self_attn.{proj}.bias", (out,), m, required=False)
            yield one(f"{layer}post_attention_layernorm.weight", (d,), m)
            if cfg.moe.is_moe(i):
                for name, shape in moe_layer_tensors(cfg, i):
                    yield one(name, shape, m)
                continue
            for proj, out, n_in in (("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)):
                yield one(f"{layer}mlp.{proj}.weight", (out, n_in), m)
                yield one(f"{layer}mlp.{proj}.bias", (out,), m, required=False)
        yield one("model.norm.weight", (d,), m)
        yield Expected(("lm_head.weight",), (v, d), required=not cfg.tie_embeddings)
        return
    # GPT-2: Conv1D weights are (in, out); every layer has biases
    f, t = cfg.ffn_dim, "transformer."
    yield one("transformer.wte.weight", (v, d), t)
    yield one("transformer.wpe.weight", (cfg.context_length, d), t)
    for i in range(cfg.n_layers):
        layer = f"transformer.h.{i}."
        shapes = {"ln_1.weight": (d,), "ln_1.bias": (d,), "attn.c_attn.weight": (d, 3 * d),
                  "attn.c_attn.bias": (3 * d,), "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
                  "ln_2.weight": (d,), "ln_2.bias": (d,), "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
                  "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,)}
        for name, shape in shapes.items():
            yield one(layer + name, shape, t)
    yield one("transformer.ln_f.weight", (d,), t)
    yield one("transformer.ln_f.bias", (d,), t)
    yield Expected(("lm_head.weight",), (v, d), required=not cfg.tie_embeddings)


def state_dict_from_hf(theirs: dict[str, torch.Tensor], cfg: ModelConfig, ours: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """llmlab's state dict (names and shapes of `ours`) from a transformers one; zeros for biases it lacks."""
    if cfg.positions == "rope":
        names, experts = llama_names(cfg), split_experts(theirs, cfg)
        out = {k: experts[k] if k in experts else theirs[names[k]] if names.get(k) in theirs else torch.zeros_like(v)
               for k, v in ours.items()}
        if cfg.tie_embeddings:
            out["lm_head.weight"] = out["tok_emb.weight"]
        return out
    # GPT-2: split the fused Conv1D attention, transpose Conv1D weights back to nn.Linear's layout
    positions = theirs["transformer.wpe.weight"][: cfg.context_length]  # a shorter run context keeps the first rows
    out = {"tok_emb.weight": theirs["transformer.wte.weight"], "pos_emb.weight": positions,
           "final_norm.weight": theirs["transformer.ln_f.weight"], "final_norm.bias": theirs["transformer.ln_f.bias"],
           "lm_head.weight": theirs.get("lm_head.weight", theirs["transformer.wte.weight"])}
    for i in range(cfg.n_layers):
        mine, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for norm, ln in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for p in ("weight", "bias"):
                out[f"{mine}{norm}.{p}"] = theirs[f"{hf}{ln}.{p}"]
        q, k, v = theirs[f"{hf}attn.c_attn.weight"].t().chunk(3)
        qb, kb, vb = theirs[f"{hf}attn.c_attn.bias"].chunk(3)
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[f"{mine}attn.{name}.weight"], out[f"{mine}attn.{name}.bias"] = w, b
        for mine_name, hf_name in (("attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                                   ("mlp.down_proj", "mlp.c_proj")):
            out[f"{mine}{mine_name}.weight"] = theirs[f"{hf}{hf_name}.weight"].t()
            out[f"{mine}{mine_name}.bias"] = theirs[f"{hf}{hf_name}.bias"]
    return out


def from_hf(hf_model):
    """An llmlab Transformer computing what a transformers Llama, Qwen2, Mixtral, Qwen2-MoE or GPT-2 causal LM
    computes (fp32)."""
    from llmlab.model.transformer import Transformer

    cfg = config_from_hf(hf_model.config)
    model = Transformer.uninitialized(cfg)
    load_hf_state(model, hf_model.state_dict())
    return model.eval()


def load_hf_state(model, theirs: dict[str, torch.Tensor]) -> None:
    """Copy a transformers state dict into an llmlab model built from its config (cast to the model's dtype)."""
    mapped = state_dict_from_hf(theirs, model.cfg, model.state_dict())
    model.load_state_dict(mapped, strict=True)  # copy_ casts: bf16 weights need no fp32 copy of their own
