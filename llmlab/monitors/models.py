"""What the monitors need to know about a model, for llmlab's Transformer, `transformers` causal LMs (Llama,
Qwen2 and other `model.layers` families; GPT-2) and any other nn.Module.

A view names the decoder layers (the "layer" in `layers=[0,-1]`) and, inside each, the attention, the MLP and
the module whose input is the MLP's hidden units; and it computes attention probabilities for a probe. A plain
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
    attention: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]] | None = None  # probe -> (B, H, T, T) each

    def layer_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def activation_modules(self) -> dict[str, nn.Module]:
        """Each layer's attention output, MLP output and the layer output (the residual stream)."""
        found = {}
        for i, layer in enumerate(self.layers):
            found[f"{self.layer_name(i)}.{self.attn}"] = layer.get_submodule(self.attn)
            found[f"{self.layer_name(i)}.{self.mlp}"] = layer.get_submodule(self.mlp)
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
def llmlab_attention(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    from llmlab.model.transformer import attention_probabilities

    return attention_probabilities(model, ids)[1]


@torch.no_grad()
def transformers_attention(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """One eval-mode forward that returns the probabilities: eager attention for it (SDPA never returns them),
    then the model's own implementation and mode again."""
    was_training, implementation = model.training, model.config._attn_implementation
    model.eval()
    if implementation != "eager":
        model.set_attn_implementation("eager")
    try:
        return list(model(ids, output_attentions=True, use_cache=False).attentions)
    finally:
        if implementation != "eager":
            model.set_attn_implementation(implementation)
        model.train(was_training)


def view_of(model: nn.Module) -> ModelView:
    from llmlab.model.transformer import Transformer

    if isinstance(model, Transformer):
        return ModelView("blocks", list(model.blocks), attention=llmlab_attention)
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "layers", None), nn.ModuleList) and hasattr(model, "config"):
        return ModelView("model.layers", list(inner.layers), attn="self_attn", attention=transformers_attention)
    transformer = getattr(model, "transformer", None)
    if isinstance(getattr(transformer, "h", None), nn.ModuleList) and hasattr(model, "config"):  # GPT-2
        return ModelView("transformer.h", list(transformer.h), mlp_hidden="mlp.c_proj",
                         attention=transformers_attention)
    return ModelView(None, [])
