"""What the monitors need to know about a model, for llmlab's Transformer, `transformers` causal LMs (Llama,
Qwen2 and other `model.layers` families; GPT-2) and any other nn.Module.

A view names the decoder layers (the "layer" in `layers=[0,-1]`) and, inside each, the attention, the MLP and
the module whose input is the MLP's hidden units; the final norm and the output head (the logit lens decodes any
layer through them); and it computes logits and attention probabilities for a probe. A plain
nn.Module has no layers: its weights and gradients are watched by name, its activations by chosen modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class ModelView:
    prefix: str | None  # parameter-name prefix of the decoder layers ("blocks"); None: the model has none
    layers: list[nn.Module]
    attn: str = "attn"  # attribute paths inside a layer
    mlp: str = "mlp"
    mlp_hidden: str = "mlp.down_proj"  # its input is the MLP's hidden units (dead-unit detection)
    # probe (B, T) -> (logits (B, T, vocab), attention probabilities (B, H, T, T) per layer)
    forward_with_attention: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]] | None = None
    final_norm: str | None = None  # attribute paths from the model: the norm before the head, and the head
    head: str | None = None

    @property
    def attention(self) -> Callable[[nn.Module, torch.Tensor], list[torch.Tensor]] | None:
        """probe -> (B, H, T, T) per layer; None for a model without known decoder layers."""
        if self.forward_with_attention is None:
            return None
        return lambda model, ids: self.forward_with_attention(model, ids)[1]

    def layer_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def activation_modules(self) -> dict[str, nn.Module]:
        """Each layer's attention output, MLP output (where it has an MLP) and the layer output (the residual
        stream)."""
        found = {}
        for i, layer in enumerate(self.layers):
            found[f"{self.layer_name(i)}.{self.attn}"] = layer.get_submodule(self.attn)
            try:
                found[f"{self.layer_name(i)}.{self.mlp}"] = layer.get_submodule(self.mlp)
            except AttributeError:  # an attention-only layer (model.mlp=none)
                pass
            found[self.layer_name(i)] = layer
        return found

    def hidden_units(self) -> list[nn.Module | None]:
        """Per layer, the module whose input is the MLP's hidden units; None where the layer has no dense MLP (a
        mixture of experts: its experts' units are not one layer's)."""
        found = []
        for layer in self.layers:
            try:
                found.append(layer.get_submodule(self.mlp_hidden))
            except AttributeError:
                found.append(None)
        return found


@torch.no_grad()
def llmlab_attention(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from llmlab.model.transformer import attention_probabilities

    return attention_probabilities(model, ids)


@torch.no_grad()
def transformers_attention(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One eval-mode forward that returns the probabilities: eager attention for it (SDPA never returns them),
    then the model's own implementation and mode again."""
    was_training, implementation = model.training, model.config._attn_implementation
    model.eval()
    if implementation != "eager":
        model.set_attn_implementation("eager")
    try:
        out = model(ids, output_attentions=True, use_cache=False)
        return out.logits, list(out.attentions)
    finally:
        if implementation != "eager":
            model.set_attn_implementation(implementation)
        model.train(was_training)


def view_of(model: nn.Module) -> ModelView:
    from llmlab.model.transformer import Transformer

    if isinstance(model, Transformer):
        return ModelView("blocks", list(model.blocks), forward_with_attention=llmlab_attention,
                         final_norm="final_norm", head="lm_head")
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "layers", None), nn.ModuleList) and hasattr(model, "config"):
        return ModelView("model.layers", list(inner.layers), attn="self_attn",
                         forward_with_attention=transformers_attention, final_norm="model.norm", head="lm_head")
    transformer = getattr(model, "transformer", None)
    if isinstance(getattr(transformer, "h", None), nn.ModuleList) and hasattr(model, "config"):  # GPT-2
        return ModelView("transformer.h", list(transformer.h), mlp_hidden="mlp.c_proj",
                         forward_with_attention=transformers_attention, final_norm="transformer.ln_f", head="lm_head")
    return ModelView(None, [])
