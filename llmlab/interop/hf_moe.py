"""Mixtures of experts as `transformers` models and back: MixtralForCausalLM (no shared experts, MoE in every block,
top-k weights renormalised) and Qwen2MoeForCausalLM (sigmoid-gated shared experts, MoE every `decoder_sparse_step`
blocks with dense MLPs between, top-k weights renormalised or not: norm_topk_prob).

Both route as llmlab does (softmax over all experts in fp32, top_k, optional renormalisation). In memory
transformers fuses each layer's experts into two 3-D tensors, gate_up_proj (E, 2 * ff, d: the gate's rows, then
the up projection's) and down_proj (E, d, ff); on disk save_pretrained writes one tensor per expert
(Mixtral: block_sparse_moe.experts.{e}.w1 gate, w2 down, w3 up; Qwen2-MoE: mlp.experts.{e}.{gate,up,down}_proj).
Everything else is Llama's layout (llmlab.interop.hf.llama_names).
"""

from __future__ import annotations

import torch

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, MoEConfig


def moe_family(cfg: ModelConfig) -> str:
    """'mixtral' or 'qwen2_moe' for a Llama-style MoE cfg; ConfigError naming the option neither can hold."""
    moe = cfg.moe
    if moe.balance == "bias":
        raise ConfigError("model.moe.balance=bias: the router bias that picks experts has no place in Mixtral or "
                          "Qwen2-MoE; export a model trained with balance=aux_loss or none")
    if cfg.bias:
        raise ConfigError("model.bias=true: Mixtral and Qwen2-MoE have no biases on the output and expert "
                          "projections; export a MoE model with bias=false")
    if moe.shared_experts:
        return "qwen2_moe"
    if moe.every != 1:
        raise ConfigError(f"model.moe.every={moe.every}: Mixtral has experts in every block; use every=1, or "
                          "shared_experts >= 1 for Qwen2-MoE, which alternates")
    if not moe.norm_topk:
        raise ConfigError("model.moe.norm_topk=false: Mixtral always renormalises the top-k weights; use "
                          "norm_topk=true, or shared_experts >= 1 for Qwen2-MoE")
    return "mixtral"


def hf_moe_config(cfg: ModelConfig, family: str, common: dict):
    """The transformers config of family for cfg; common: the Llama-style fields both take."""
    from transformers import MixtralConfig, Qwen2MoeConfig

    moe = cfg.moe
    if family == "mixtral":
        return MixtralConfig(**common, intermediate_size=cfg.expert_dim, num_local_experts=moe.experts,
                             num_experts_per_tok=moe.top_k, sliding_window=None, router_jitter_noise=0.0)
    return Qwen2MoeConfig(**common, intermediate_size=cfg.ffn_dim, moe_intermediate_size=cfg.expert_dim,
                          shared_expert_intermediate_size=moe.shared_experts * cfg.expert_dim,
                          num_experts=moe.experts, num_experts_per_tok=moe.top_k, norm_topk_prob=moe.norm_topk,
                          decoder_sparse_step=moe.every, mlp_only_layers=[], qkv_bias=False,
                          use_sliding_window=False)


def moe_fields(hf_cfg) -> dict:
    """ModelConfig fields (d_ff, moe) of a transformers Mixtral or Qwen2-MoE config; ConfigError for what llmlab
    cannot hold."""
    kind = hf_cfg.model_type
    if kind == "mixtral":
        if getattr(hf_cfg, "sliding_window", None):
            raise ConfigError(f"mixtral: sliding_window={hf_cfg.sliding_window} is not supported; llmlab "
                              "attends to the whole context")
        return {"moe": MoEConfig(experts=hf_cfg.num_local_experts, top_k=hf_cfg.num_experts_per_tok,
                                 d_ff=hf_cfg.intermediate_size, norm_topk=True), "d_ff": hf_cfg.intermediate_size}
    every, shared = hf_cfg.decoder_sparse_step, hf_cfg.shared_expert_intermediate_size
    if list(hf_cfg.mlp_only_layers or []):
        raise ConfigError(f"qwen2_moe: mlp_only_layers={hf_cfg.mlp_only_layers} is not supported; llmlab places "
                          "experts every decoder_sparse_step blocks only")
    if getattr(hf_cfg, "use_sliding_window", False):
        raise ConfigError("qwen2_moe: use_sliding_window=true is not supported; llmlab attends to the whole context")
    if not shared or shared % hf_cfg.moe_intermediate_size:
        raise ConfigError(f"qwen2_moe: shared_expert_intermediate_size={shared} must be a positive multiple of "
                          f"moe_intermediate_size={hf_cfg.moe_intermediate_size} (llmlab's shared experts)")
    return {"moe": MoEConfig(experts=hf_cfg.num_experts, top_k=hf_cfg.num_experts_per_tok,
                             shared_experts=shared // hf_cfg.moe_intermediate_size, every=every,
                             d_ff=hf_cfg.moe_intermediate_size, norm_topk=bool(hf_cfg.norm_topk_prob)),
            "d_ff": hf_cfg.intermediate_size}


def moe_names(cfg: ModelConfig) -> dict[str, str]:
    """llmlab name -> transformers' in-memory name of each router and shared-expert tensor (the experts are fused
    there: fuse_experts, split_experts)."""
    names = {}
    for i in range(cfg.n_layers):
        if not cfg.moe.is_moe(i):
            continue
        ours, theirs = f"blocks.{i}.mlp.", f"model.layers.{i}.mlp."
        names[f"{ours}router.weight"] = f"{theirs}gate.weight"
        if cfg.moe.shared_experts:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names[f"{ours}shared.{proj}.weight"] = f"{theirs}shared_expert.{proj}.weight"
            names[f"{ours}shared_gate.weight"] = f"{theirs}shared_expert_gate.weight"
    return names


MIXTRAL_EXPERT = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def expert_name(family: str, layer: int, expert: int, proj: str) -> str:
    if family == "mixtral":
        return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{MIXTRAL_EXPERT[proj]}.weight"
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"


def fuse_experts(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' in-memory expert tensors from llmlab's state dict."""
    out = {}
    for i in range(cfg.n_layers):
        if not cfg.moe.is_moe(i):
            continue
        ours = [f"blocks.{i}.mlp.experts.{e}." for e in range(cfg.moe.experts)]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{p}gate_proj.weight"], state[f"{p}up_proj.weight"]]) for p in ours])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([state[f"{p}down_proj.weight"] for p in ours])
    return out


def split_experts(theirs: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """llmlab's per-expert tensors from transformers' in-memory fused ones."""
    out = {}
    for i in range(cfg.n_layers):
        fused = f"model.layers.{i}.mlp.experts."
        if not cfg.moe.is_moe(i) or f"{fused}gate_up_proj" not in theirs:
            continue
        for e, (gate_up, down) in enumerate(zip(theirs[f"{fused}gate_up_proj"], theirs[f"{fused}down_proj"],
                                                strict=True)):
            gate, up = gate_up.chunk(2)
            for proj, tensor in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
                out[f"blocks.{i}.mlp.experts.{e}.{proj}.weight"] = tensor
    return out


def moe_layer_tensors(cfg: ModelConfig, layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """(on-disk name, shape) of a MoE block's feed-forward tensors."""
    d, f, moe = cfg.d_model, cfg.expert_dim, cfg.moe
    family = "qwen2_moe" if moe.shared_experts else "mixtral"
    router = "block_sparse_moe" if family == "mixtral" else "mlp"
    found = [(f"model.layers.{layer}.{router}.gate.weight", (moe.experts, d))]
    for e in range(moe.experts):
        for proj, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            found.append((expert_name(family, layer, e, proj), shape))
    if family == "qwen2_moe":
        s = moe.shared_experts * f
        for proj, shape in (("gate_proj", (s, d)), ("up_proj", (s, d)), ("down_proj", (d, s))):
            found.append((f"model.layers.{layer}.mlp.shared_expert.{proj}.weight", shape))
        found.append((f"model.layers.{layer}.mlp.shared_expert_gate.weight", (1, d)))
    return found
