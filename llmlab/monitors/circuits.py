"""CircuitsMonitor: which heads become previous-token, induction and copy heads, and at which depth the prediction
forms (the logit lens), measured while training runs.

On a capture step the model runs once more, in eval mode and without gradients, on one batch of two probes,
with attention probabilities computed explicitly (training keeps SDPA):
- real text: the copy probe (validation documents of the embedded language, with every copy the grammar
  determines located: by default the typed code, whose digits only the code given earlier predicts; names with
  llmlab.data.copy_probe's kinds=("name",)) or else the run's fixed probe;
- random tokens repeated twice (length L each, drawn once from a seeded generator of the monitor's own).

Per head (for every layer), from the attention probabilities A[query, key]:
- prev_token: mean A[i, i-1] over the real-text positions;
- induction: mean A[i, i-L+1] over positions i of the second copy: attention to the token that followed the
  current token's earlier occurrence;
- copy: mean over copies of the attention mass from the position before the copy to its tokens where they
  were first given.
Per model: copy_accuracy (share of copies whose every token is the top-1 prediction), icl_loss_drop (loss
on the first copy minus loss on the second, nats), and per layer the logit lens: the loss of decoding that
layer's residual stream through the final norm and the head. Scores are reduced on the device and copied once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.config.monitors import CircuitsMonitorConfig, ProbeConfig
from llmlab.data.copy_probe import CopyProbe
from llmlab.monitors.base import Door, Monitor, MonitorContext, Schedule, StepInfo
from llmlab.monitors.files import append_history, truncate_history
from llmlab.monitors.models import ModelView

SCORES = ("induction", "prev_token", "copy")
FORMING = ("induction", "copy")  # the scores whose first crossing of the threshold is a formation event
LENS_CHUNK = 1 << 22  # logits computed at once by the logit lens (rows x tokens x vocab): bounded memory


def induction_rows(vocab_size: int, rows: int, tokens: int, seed: int) -> tuple[torch.Tensor, int]:
    """(rows, tokens) of random tokens repeated: r r r... with r of length L = tokens // 2; and L."""
    length = tokens // 2
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab_size, (rows, length), generator=gen)
    return torch.cat([r, r, r], dim=1)[:, :tokens], length


def prev_token_scores(probs: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) -> (H,) mean attention from each position i >= 1 to i - 1."""
    return torch.diagonal(probs, offset=-1, dim1=-2, dim2=-1).float().mean((0, 2))


def induction_scores(probs: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, T, T) of rows r r ... (r of `length` tokens, T >= 2 * length) -> (H,) mean attention from i in the
    second copy to i - length + 1."""
    diagonal = torch.diagonal(probs, offset=-(length - 1), dim1=-2, dim2=-1)  # entry j: (j + length - 1, j)
    return diagonal[..., 1:length + 1].float().mean((0, 2))


def copy_weights(probe: CopyProbe, tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For copy_scores: (rows, T, T) weights that average the attention mass from the position before each copied
    name to its introduction; and for copy_accuracy: (events, rows, T - 1) the positions predicting each name."""
    rows, events = len(probe.ids), probe.events
    mass = torch.zeros(rows, tokens, tokens)
    predicting = torch.zeros(len(events), rows, tokens - 1, dtype=torch.bool)
    for n, e in enumerate(events):
        mass[e.row, e.start - 1, e.source_start:e.source_end] = 1.0 / len(events)
        predicting[n, e.row, e.start - 1:e.end - 1] = True
    return mass.to(device), predicting.to(device)


def copy_scores(probs: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) -> (H,) the attention mass from each copy's query to its source, averaged over copies."""
    return (probs.float() * mass[:, None]).sum((0, 2, 3))


def copy_accuracy(logits: torch.Tensor, ids: torch.Tensor, predicting: torch.Tensor) -> torch.Tensor:
    """Share of copied names whose every token is the top-1 prediction given the true text before it."""
    wrong = (logits[:, :-1].argmax(-1) != ids[:, 1:]).float()  # (B, T - 1)
    return ((predicting.float() * wrong).sum((1, 2)) == 0).float().mean()


def next_token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T - 1) cross-entropy of each next token."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none"
                           ).view(len(ids), -1)


def icl_loss_drop(logits: torch.Tensor, ids: torch.Tensor, length: int) -> torch.Tensor:
    """Loss on the first copy minus loss on the second (nats): what repeating the tokens is worth in context."""
    losses = next_token_losses(logits, ids)
    first, second = losses[:, :length - 1], losses[:, length:2 * length - 1]  # the first token of a copy is excluded
    return first.mean() - second.mean()


def logit_lens(residuals: list[torch.Tensor], ids: torch.Tensor, norm: nn.Module, head: nn.Module) -> torch.Tensor:
    """(layers,) loss of each layer's residual stream decoded through the final norm and the head."""
    vocab = head.weight.shape[0]
    chunk = max(1, LENS_CHUNK // (ids.shape[1] * vocab))
    losses = []
    for residual in residuals:
        total = sum(next_token_losses(head(norm(residual[i:i + chunk])), ids[i:i + chunk]).float().sum()
                    for i in range(0, len(ids), chunk))
        losses.append(total / (len(ids) * (ids.shape[1] - 1)))
    return torch.stack(losses)


@torch.no_grad()
def forward_with_residuals(model: nn.Module, view: ModelView, ids: torch.Tensor
                           ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(logits, attention probabilities per layer, each layer's output residual stream) of one eval forward."""
    residuals: list[torch.Tensor] = []

    def keep(module, inputs, output):
        residuals.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(keep) for layer in view.layers]
    try:
        logits, attention = view.forward_with_attention(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    return logits, attention, residuals


class CircuitsMonitor(Monitor):
    """In llmlab's trainer: built from monitors.circuits (with the copy probe when the data is the embedded
    language). In any loop (llmlab models, transformers Llama, Qwen2, GPT-2): CircuitsMonitor(save_dir="circ",
    every=100) as a context manager with circ.log(model, batch, step, loss=...); the first batch's first rows are
    the real-text probe, and copy_probe=llmlab.data.copy_probe.copy_probe(...) adds the copy scores."""

    name = "circuits"

    def __init__(self, cfg: CircuitsMonitorConfig | None = None, *, copy_probe: CopyProbe | None = None,
                 save_dir: str | Path | None = None, tensorboard: bool = False, probe: ProbeConfig | None = None,
                 **fields):
        cfg = cfg or CircuitsMonitorConfig(enabled=True, **fields)
        door = Door(Path(save_dir), tensorboard) if save_dir is not None else None
        super().__init__(Schedule(cfg.every, list(cfg.steps), list(cfg.epochs)), door, probe or ProbeConfig())
        self.cfg, self.copy_probe = cfg, copy_probe
        self.formed: set[tuple[str, int, int]] = set()  # (score, layer, head) that crossed the threshold

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        super().on_train_start(ctx, step)
        view = ctx.view
        if view.forward_with_attention is None or view.head is None:
            raise ValueError(f"CircuitsMonitor: {type(ctx.model).__name__} has no decoder layers it knows")
        self.norm, self.head = ctx.model.get_submodule(view.final_norm), ctx.model.get_submodule(view.head)
        device = self.head.weight.device
        if self.copy_probe is not None:
            real = self.copy_probe.ids[:, : self.cfg.tokens]
        elif ctx.probe is not None:
            real = ctx.probe[:, : self.cfg.tokens].cpu()
        else:
            raise ValueError("CircuitsMonitor needs a probe batch")
        tokens = real.shape[1]
        if tokens < 2:
            raise ValueError(f"CircuitsMonitor: the probe has {tokens} token(s); it needs at least 2")
        # the induction rows are as long as the real ones when they can be: one forward for both
        context = max_context(ctx.model) or self.cfg.tokens
        random_rows, self.length = induction_rows(self.head.weight.shape[0], self.cfg.induction_rows,
                                                  min(self.cfg.tokens, context), self.cfg.seed)
        self.real, self.random = real.to(device), random_rows.to(device)
        self.copy = None
        if self.copy_probe is not None:
            events = [e for e in self.copy_probe.events if e.end <= tokens]
            if events:
                self.copy = copy_weights(CopyProbe(real, events), tokens, device)
        self.dir = self.output_dir(ctx)
        truncate_history(self.dir / "history.jsonl", ctx.resume_step)
        self.formed = formed_in(self.dir / "history.jsonl")  # a resumed run does not announce them again

    def measure(self) -> dict:
        """One probe forward: every score, as plain numbers (one transfer from the device)."""
        real, random_rows = self.real, self.random
        (logits, attention, residuals), (random_logits, random_attention, _) = self.forward()
        measured = {"induction": torch.stack([induction_scores(p, self.length) for p in random_attention]),
                    "prev_token": torch.stack([prev_token_scores(p) for p in attention])}  # (layers, H)
        if self.copy is not None:
            mass, predicting = self.copy
            measured["copy"] = torch.stack([copy_scores(p, mass) for p in attention])
            measured["copy_accuracy"] = copy_accuracy(logits, real, predicting)
        measured["icl_loss_drop"] = icl_loss_drop(random_logits, random_rows, self.length)
        measured["logit_lens"] = logit_lens(residuals, real, self.norm, self.head)
        host = to_host(measured)
        return {"scores": {name: host.pop(name) for name in SCORES if name in host}, **host}

    def forward(self) -> tuple[tuple, tuple]:
        """(logits, attention, residuals) of the real rows and of the random rows: one forward when they are as
        long, else two (a short probe text in analyze)."""
        model, view, n = self.ctx.model, self.ctx.view, len(self.real)
        if self.real.shape[1] != self.random.shape[1]:
            return (forward_with_residuals(model, view, self.real), forward_with_residuals(model, view, self.random))
        logits, attention, residuals = forward_with_residuals(model, view, torch.cat([self.real, self.random]))
        return ((logits[:n], [p[:n] for p in attention], [r[:n] for r in residuals]),
                (logits[n:], [p[n:] for p in attention], [r[n:] for r in residuals]))

    def on_step_end(self, info: StepInfo) -> None:
        if not self.schedule.due(info.step):
            return
        measured = self.measure()
        formed = self.formation_events(info.step, measured["scores"])
        record = {**info.as_dict, "timestamp": time.time(), "probe_shape": list(self.real.shape),
                  "induction_shape": list(self.random.shape),
                  "induction_length": self.length, "copy_events": len(self.copy[1]) if self.copy else 0,
                  **measured, "formed": formed}
        if self.ctx.sinks is not None:
            scalars = {f"circuits/layer{layer}/head{head}/{name}": float(value)
                       for name, layers in measured["scores"].items()
                       for layer, heads in enumerate(layers) for head, value in enumerate(heads)}
            scalars.update({f"circuits/logit_lens/layer{layer}": float(value)
                            for layer, value in enumerate(measured["logit_lens"])})
            scalars.update({f"circuits/{key}": float(measured[key]) for key in ("copy_accuracy", "icl_loss_drop")
                            if key in measured})
            self.ctx.sinks.log_scalars(info.step, scalars)
        self.submit(lambda: self._write(info.step, record))

    def formation_events(self, step: int, scores: dict[str, list[list[float]]]) -> list[dict]:
        """Heads whose induction or copy score crosses the threshold for the first time: an info alert each."""
        events = []
        for name in FORMING:
            for layer, heads in enumerate(scores.get(name, [])):
                for head, value in enumerate(heads):
                    if value > self.cfg.threshold and (name, layer, head) not in self.formed:
                        self.formed.add((name, layer, head))
                        events.append({"score": name, "layer": layer, "head": head, "value": value})
                        self.ctx.alerts.alert(step, "circuit_formed", f"layer{layer}/head{head}/{name}",
                                              f"layer {layer} head {head} became a{'n' if name == 'induction' else ''}"
                                              f" {name} head at step {step}: score {value:.2f} > "
                                              f"{self.cfg.threshold}", level="info", value=value)
        return events

    def _write(self, step: int, record: dict) -> None:
        step_dir = self.dir / f"step_{step}"
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / "statistics.json").write_text(json.dumps(record, indent=1))
        append_history(self.dir / "history.jsonl", record)
        if self.cfg.images:
            path = step_dir / "circuits.png"
            scores = {name: np.asarray(v) for name, v in record["scores"].items()}
            (image,) = self.ctx.figures.draw_all([("circuit_scores", path, True,
                                                   {"scores": scores, "title": f"circuit scores (step {step})"})])
            if self.ctx.sinks is not None:
                self.ctx.sinks.log_image(step, "circuits/scores", image)


def max_context(model: nn.Module) -> int | None:
    """The longest input the model takes (llmlab's context_length, transformers' position limit)."""
    config = getattr(model, "cfg", None) or getattr(model, "config", None)
    for name in ("context_length", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def to_host(tensors: dict[str, torch.Tensor]) -> dict:
    """The tensors as (nested) lists of floats, in one copy from the device."""
    flat = torch.cat([t.detach().float().flatten() for t in tensors.values()]).cpu()
    out, at = {}, 0
    for name, t in tensors.items():
        out[name] = flat[at:at + t.numel()].view(t.shape).tolist()
        at += t.numel()
    return out


def formed_in(history: Path) -> set[tuple[str, int, int]]:
    """The heads a history file records as formed."""
    formed = set()
    if history.exists():
        for line in history.read_text(encoding="utf-8").splitlines():
            try:
                for event in json.loads(line).get("formed", []):
                    formed.add((event["score"], event["layer"], event["head"]))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                continue
    return formed
