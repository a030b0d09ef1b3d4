"""One decoder-only transformer family covering GPT-2 style and Llama style.

GPT-2 style: learned positions, LayerNorm, GELU MLP, multi-head attention, biases.
Llama style: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.
Every option is one field of ModelConfig, so any mix of the two is a valid model too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmlab.config.schema import ModelConfig
from llmlab.model.fused import FusedRMSNorm, rotate_heads
from llmlab.model.moe import MoE


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer.

    mask (B, S) marks which cached tokens are real; None while no padding was ever fed (all real).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor] | None]
    mask: torch.Tensor | None = None

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([None] * n_layers)

    @property
    def length(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return FusedRMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """The rotation frequency of each feature pair, (head_dim // 2,)."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    if cfg.rope_scaling == "llama3":
        # Llama 3.1's long-context recipe: wavelengths longer than original_context / low_freq_factor are
        # stretched by factor, those shorter than original_context / high_freq_factor are kept, and the band
        # between is interpolated linearly in original_context / wavelength.
        wavelength = 2 * math.pi / inv_freq
        ratio = cfg.rope_original_context / wavelength
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        smooth = ((ratio - low) / (high - low)).clamp(0.0, 1.0)  # 0: stretch, 1: keep
        inv_freq = (1 - smooth) * inv_freq / cfg.rope_factor + smooth * inv_freq
    return inv_freq


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings, each (context_length, head_dim // 2): the positions a run uses, no
    more. At most these two tables exist at once (sin is computed into the angles)."""
    angles = torch.outer(torch.arange(cfg.context_length, dtype=torch.float32), rope_frequencies(cfg))
    return angles.cos(), angles.sin_()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's features; x is (B, H, T, head_dim). The plain formula:
    the model runs llmlab.model.fused.rotate_heads, on q and k at once, and the tests hold one to the other."""
    x1, x2 = x.chunk(2, dim=-1)
    # (T, head_dim // 2) broadcast over B and H, or per row (B, 1, T, head_dim // 2) when padded
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def plain_linear(*modules: nn.Module) -> bool:
    """Whether these projections are plain nn.Linear with no hooks (nothing wraps them, LoRA or a monitor's
    hook), so their weights may be concatenated into one matmul without anyone missing a call."""
    return all(type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def fused_linear(x: torch.Tensor, *modules: nn.Linear) -> torch.Tensor:
    """x through several projections as one matmul, their outputs side by side in the last dimension. The
    concatenated weight is a copy made each call (small next to the activations); its gradient is split back
    into each module's own parameter, so parameter names and checkpoints are those of separate projections."""
    weight = torch.cat([m.weight for m in modules])
    bias = torch.cat([m.bias for m in modules]) if modules[0].bias is not None else None
    return F.linear(x, weight, bias)


def padded_attention_mask(keys: torch.Tensor, T: int) -> torch.Tensor:
    """(B, 1, T, S) for the last T of S keys (B, S) marked real: each query sees the real keys up to itself,
    and always itself, since a padding query would otherwise see no key and softmax over nothing is NaN."""
    S = keys.shape[1]
    causal = torch.ones(T, S, dtype=torch.bool, device=keys.device).tril(diagonal=S - T)
    itself = torch.arange(S, device=keys.device) == torch.arange(S - T, S, device=keys.device)[:, None]
    return ((causal & keys[:, None, :]) | itself)[:, None]


def rope_tables_for_heads(rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's cos/sin, (T, hd // 2) or per row (B, 1, T, hd // 2), laid out for (B, T, heads, hd)."""
    cos, sin = rope
    if cos.dim() == 2:
        return cos[:, None], sin[:, None]  # (T, 1, hd // 2)
    return cos.transpose(1, 2), sin.transpose(1, 2)  # (B, T, 1, hd // 2)


def fuse_qkv_pays(cfg: ModelConfig) -> bool:
    """Whether one q/k/v matmul beats three on a CPU at this width: forward + backward 4-5% faster at d_model 128
    and 256 in two runs, within noise of three from 512 (`python -m llmlab.bench fused`, "Making it fast" in
    docs/results/speed.md). On a GPU it is always one matmul."""
    return cfg.d_model <= 256


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.use_rope = cfg.positions == "rope"
        self.qk_norm = cfg.qk_norm
        # one (d, (H + 2 Hkv) hd) matmul instead of three where it pays (fuse_qkv_pays)
        self.fuse_qkv = fuse_qkv_pays(cfg)
        # Monitors set keep_probs for one probe forward: SDPA never returns its weights, so that
        # forward computes softmax(q k^T / sqrt(d)) explicitly and leaves it in `probs`.
        self.keep_probs = False
        self.probs: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        padding_mask: torch.Tensor | None = None,
        value_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """padding_mask: None (no padding) or padded_attention_mask's (B, 1, T, S), which replaces causality;
        value_emb: None or (B, T, Hkv * hd), added to the values (model.value_embeddings)."""
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        tables = rope_tables_for_heads(rope) if self.use_rope else None
        if self.qk_norm or value_emb is not None:
            q, k, v = self.q_proj(x).view(B, T, H, hd), self.k_proj(x).view(B, T, Hkv, hd), self.v_proj(x)
            if value_emb is not None:
                v = v + value_emb
            v = v.view(B, T, Hkv, hd)
            if self.qk_norm:  # unit RMS per head: the scores' scale is set by the softmax's 1/sqrt(hd) alone
                q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
            if tables is not None:
                q, k = rotate_heads(q, *tables), rotate_heads(k, *tables)
        elif (x.is_cuda or self.fuse_qkv) and plain_linear(self.q_proj, self.k_proj, self.v_proj):
            qkv = fused_linear(x, self.q_proj, self.k_proj, self.v_proj).view(B, T, H + 2 * Hkv, hd)
            qk, v = qkv[:, :, :H + Hkv], qkv[:, :, H + Hkv:]
            if tables is not None:  # q's and k's heads rotated together, one op
                qk = rotate_heads(qk, *tables)
            q, k = qk[:, :, :H], qk[:, :, H:]
        else:
            q, k = self.q_proj(x).view(B, T, H, hd), self.k_proj(x).view(B, T, Hkv, hd)
            v = self.v_proj(x).view(B, T, Hkv, hd)
            if tables is not None:
                q, k = rotate_heads(q, *tables), rotate_heads(k, *tables)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        present = (k, v)
        if self.n_kv_heads != self.n_heads:  # GQA/MQA: each kv head serves a group of query heads
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        # With a cache the T new queries sit at the end of S keys: query i may see keys <= S - T + i.
        S = k.shape[2]
        if padding_mask is not None:
            mask, causal = padding_mask, False
        elif past is None or T == 1:
            mask, causal = None, past is None and T > 1
        else:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            causal = False
        if self.keep_probs:
            y = self._explicit_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
            )  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(y), present

    def _explicit_attention(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """What SDPA computes, written out so the probabilities can be kept (no dropout: probes are eval)."""
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, T, S)
        visible = mask if mask is not None else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        self.probs = probs.detach()
        return probs @ v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        """hidden: the width of its hidden units (None = cfg.ffn_dim; an expert's is cfg.expert_dim)."""
        super().__init__()
        self.swiglu, self.relu2 = cfg.mlp == "swiglu", cfg.mlp == "relu2"
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"
        hidden = cfg.ffn_dim if hidden is None else hidden
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu and plain_linear(self.gate_proj, self.up_proj):  # gate and up as one matmul
            gate, up = fused_linear(x, self.gate_proj, self.up_proj).chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.relu2:
            h = F.relu(self.up_proj(x)).square()
        else:
            h = F.gelu(self.up_proj(x), approximate=self.gelu_approximate)
        return self.down_proj(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); mlp is a MoE in a MoE block, and absent
    (with its norm) in an attention-only block (model.mlp=none), the model of the induction-head studies."""

    def __init__(self, cfg: ModelConfig, moe: bool = False):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        attention_only = cfg.mlp == "none"
        self.mlp_norm = None if attention_only else make_norm(cfg)
        self.mlp = None if attention_only else MoE(cfg, MLP) if moe else MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, past=None, padding_mask=None, keep_kv=True, value_emb=None):
        """keep_kv=False (training): no keys and values returned, so nothing of the attention outlives it."""
        a, present = self.attn(self.attn_norm(x), rope, past, padding_mask, value_emb)
        x = x + self.dropout(a)
        if self.mlp is not None:
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, present if keep_kv else None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (the Run takes it from the tokenizer)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cfg.moe.is_moe(i)) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg)
        self.activation_checkpointing = False  # trainer.activation_checkpointing: memory for ~1/3 more compute
        self.compiled_blocks: list[nn.Module] | None = None  # compile_blocks(): what training forwards run
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # outside the blocks, so Muon leaves them to AdamW as it does the token embedding
        self.value_embs = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.kv_heads * cfg.head_dim)
                                        for _ in range(cfg.n_layers)) if cfg.value_embeddings else None
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Scale the residual-branch outputs by depth so the residual stream's variance stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)

    @classmethod
    def uninitialized(cls, cfg: ModelConfig) -> Transformer:
        """Weights allocated but never initialised, for a caller that loads every one of them: a 1B model's
        random init alone takes ~40 s on 2 CPU cores."""
        with torch.device("meta"):
            model = cls(cfg)
        if cfg.positions == "rope":  # computed buffers, not loaded ones: never allocated empty beforehand
            del model.rope_cos, model.rope_sin
        model.to_empty(device="cpu")
        if cfg.tie_embeddings:  # to_empty gives the two names two tensors
            model.lm_head.weight = model.tok_emb.weight
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg)
            model.register_buffer("rope_cos", cos, persistent=False)
            model.register_buffer("rope_sin", sin, persistent=False)
        return model

    def compile_blocks(self, **options) -> None:
        """Regional compilation: each block through torch.compile (one graph, reused by every block of the same
        kind, so compiling takes seconds per kind instead of minutes for the whole model). Only training
        forwards with gradients run them; evaluation, no_grad and generation run the eager blocks, so nothing
        recompiles at the first evaluation or at each new generation length. The compiled wrappers are kept in a
        plain list, not as submodules: parameter names and checkpoints stay those of the eager model."""
        self.compiled_blocks = [torch.compile(block, **options) for block in self.blocks]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def forward(
        self, idx: torch.Tensor, cache: KVCache | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with a cache, idx are the new tokens only.

        attention_mask (B, T), 1 for real tokens and 0 for left padding, covers idx only (the cache keeps
        the earlier ones). With padding, a row's positions count its real tokens and no query sees a padding key.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds model.context_length={self.cfg.context_length}"
            )
        padding_mask = None
        if attention_mask is not None or (cache is not None and cache.mask is not None):
            pos, padding_mask = self._padded_positions(idx, cache, attention_mask)  # pos (B, T): per row
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device) if padding_mask is None else pos)
            rope = None
        elif padding_mask is None:  # every row at start..start + T - 1
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        else:
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B, 1, T, hd // 2): over heads
        x = self.drop(x)
        training = self.training and cache is None and torch.is_grad_enabled()
        recompute = self.activation_checkpointing and training
        blocks = self.compiled_blocks if training and self.compiled_blocks is not None else self.blocks
        for i, block in enumerate(blocks):
            value_emb = self.value_embs[i](idx) if self.value_embs is not None else None  # (B, T, Hkv * hd)
            if recompute:  # keep only each block's input; backward runs the block again (same dropout masks)
                x, _ = checkpoint(block, x, rope, None, padding_mask, False, value_emb, use_reentrant=False)
                continue
            past = cache.layers[i] if cache is not None else None
            x, present = block(x, rope, past, padding_mask, keep_kv=cache is not None, value_emb=value_emb)
            if cache is not None:
                cache.layers[i] = present
        logits = self.lm_head(self.final_norm(x))
        if self.cfg.logit_softcap:  # smooth bound: no logit can run away while the rest still learn
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _padded_positions(
        self, idx: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, T) of idx counting real tokens only, and padded_attention_mask over cache + idx.

        Positions start at 0 at each row's first real token of the cache (or of idx without one), which is
        what that row fed alone would get; padding before it clamps to position 0 and is never attended to.
        """
        B, T = idx.shape
        new = idx.new_ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        keys = new
        if cache is not None:
            past = cache.mask if cache.mask is not None else idx.new_ones(B, cache.length, dtype=torch.bool)
            keys = cache.mask = torch.cat((past, new), dim=1)  # (B, S)
        pos = (keys.cumsum(dim=1) - 1).clamp(min=0)[:, -T:]
        return pos, padded_attention_mask(keys, T)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameters counted once (tied weights once); without embeddings drops token/position tables."""
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def resize_vocab(self, vocab_size: int) -> bool:
        """Grow the token embedding (and an untied head) to vocab_size rows; new rows start at the mean of the old
        ones, so their logits start near the average instead of at random. False when it was big enough."""
        old = self.tok_emb.weight
        if old.shape[0] >= vocab_size:
            return False
        if self.value_embs is not None:
            raise ValueError("model.value_embeddings: growing the vocabulary of value embeddings is not supported")
        tied = self.lm_head.weight is old
        with torch.no_grad():
            grown = torch.cat([old, old.mean(0, keepdim=True).expand(vocab_size - old.shape[0], -1)])
            self.tok_emb = nn.Embedding(vocab_size, old.shape[1], _weight=grown.clone(), device=old.device,
                                        dtype=old.dtype)
            head = self.lm_head.weight
            self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
            if tied:
                self.lm_head.weight = self.tok_emb.weight
            else:
                self.lm_head.weight.copy_(torch.cat([head, head.mean(0, keepdim=True).expand(vocab_size - len(head),
                                                                                            -1)]))
        self.cfg = dataclasses.replace(self.cfg, vocab_size=vocab_size)
        return True

    def moe_layers(self) -> list[tuple[int, MoE]]:
        """(block index, its MoE) for each MoE block; empty for a dense model."""
        return [(i, block.mlp) for i, block in enumerate(self.blocks) if isinstance(block.mlp, MoE)]

    def inactive_params(self) -> int:
        """Expert weights a token does not use: in each MoE block, all but top_k of the routed experts."""
        return sum(sum(p.numel() for e in moe.experts[: moe.n_experts - moe.top_k] for p in e.parameters())
                   for _, moe in self.moe_layers())

    def active_params(self, include_embeddings: bool = True) -> int:
        """Parameters one token's forward uses (num_params for a dense model)."""
        return self.num_params(include_embeddings) - self.inactive_params()

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The training terms the last training forward left besides the objective's own loss, weighted by their
        coefficients (MoE: load balancing and router z-loss); None when there are none (a dense model). An
        objective adds it to its loss in training mode (llmlab.train.objectives.with_auxiliary)."""
        terms = []
        for _, moe in self.moe_layers():
            if moe.losses is None:
                continue
            aux, z = moe.losses
            moe.losses = None  # each forward's terms are added once
            cfg = self.cfg.moe
            if cfg.balance == "aux_loss" and cfg.aux_loss_coef:
                terms.append(cfg.aux_loss_coef * aux)
            if cfg.z_loss_coef:
                terms.append(cfg.z_loss_coef * z)
        return torch.stack(terms).sum() if terms else None

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per non-embedding weight it uses (MoE: its active experts) plus attention's
        score/value matmuls."""
        cfg = self.cfg
        n = self.active_params(include_embeddings=False) + cfg.vocab_size * cfg.d_model  # lm_head matmul
        attn = 12 * cfg.n_layers * cfg.d_model * cfg.context_length // 2  # causal: half the scores on average
        return 6 * n + attn


@torch.no_grad()
def attention_probabilities(model: Transformer, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One eval-mode forward of idx (B, T) that keeps every layer's attention: (logits, [(B, H, T, T)] per layer).

    The model's train/eval mode is restored afterwards and no random numbers are drawn, so a
    monitor calling this between training steps leaves training exactly as it was.
    """
    layers = [block.attn for block in model.blocks]
    was_training = model.training
    model.eval()
    for attn in layers:
        attn.keep_probs = True
    try:
        logits = model(idx)
        return logits, [attn.probs for attn in layers]
    finally:
        for attn in layers:
            attn.keep_probs, attn.probs = False, None
        model.train(was_training)
