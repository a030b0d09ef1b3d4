"""Is a head the cause? The in-context scores of a model with heads switched off (llmlab.model.ablation), beside
the same scores of the intact model (`python -m llmlab.analyze run=<dir> ablate=[L1H2]`).

Two probes, both measured with and without the ablation:
- random tokens repeated (the circuits monitor's induction probe, any run): the loss on the second copy and
  random_icl_score (loss on the second copy minus loss on the first), plus each head's induction and
  previous-token score of the intact model, which say which heads to ablate;
- the run's own repeated spans when it trained on data=induction: the loss on the repeated tokens, on their first
  occurrences, and icl_score = repeat - first (the evaluator's eval/icl_score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.data.induction import SpanProbe
from llmlab.model.ablation import Head, ablated_heads, head_output_means
from llmlab.model.transformer import Transformer, attention_probabilities
from llmlab.monitors.circuits import induction_rows, induction_scores, next_token_losses, prev_token_scores

RANDOM_ROWS, RANDOM_TOKENS, RANDOM_SEED = 32, 128, 0  # the induction probe: rows of random tokens repeated


@dataclass
class AblationProbes:
    random: torch.Tensor  # (rows, tokens): random tokens repeated, each copy `length` long
    length: int
    spans: SpanProbe | None  # the run's repeated spans (data=induction), else None

    @classmethod
    def of(cls, model: Transformer, spans: SpanProbe | None = None) -> AblationProbes:
        device = model.lm_head.weight.device
        tokens = min(RANDOM_TOKENS, model.cfg.context_length)
        random, length = induction_rows(model.cfg.vocab_size, RANDOM_ROWS, tokens, RANDOM_SEED)
        if spans is not None:
            spans = SpanProbe(spans.ids.to(device), spans.first.to(device), spans.repeat.to(device))
        return cls(random.to(device), length, spans)


@torch.no_grad()
def in_context_scores(model: Transformer, probes: AblationProbes) -> dict[str, float]:
    """Losses (nats/token) of the model as it is now (inside an ablation, the ablated one)."""
    losses = next_token_losses(model(probes.random), probes.random)
    n = probes.length
    first, second = losses[:, :n - 1].mean(), losses[:, n:2 * n - 1].mean()  # a copy's first token is excluded
    scores = {"random_second_copy_loss": second.item(), "random_icl_score": (second - first).item()}
    if probes.spans is not None:
        spans = probes.spans
        span_losses = next_token_losses(model(spans.ids), spans.ids)  # (rows, length): target j is token j
        repeat, first = span_losses[spans.repeat].mean().item(), span_losses[spans.first].mean().item()
        scores.update({"icl_score": repeat - first, "repeat_loss": repeat, "first_loss": first})
    return scores


def ablation_record(model: Transformer, probes: AblationProbes, head_sets: list[list[Head]], mode: str) -> dict:
    """The intact model's scores and per-head circuit scores, and the scores with each set of heads ablated (mode
    zero or mean), each with its change from the intact model."""
    model.eval()
    baseline = in_context_scores(model, probes)
    _, attention = attention_probabilities(model, probes.random)
    heads = {"induction": [induction_scores(p, probes.length).tolist() for p in attention],
             "prev_token": [prev_token_scores(p).tolist() for p in attention]}
    means = head_output_means(model, probes.random) if mode == "mean" else None
    ablated = []
    for heads_off in head_sets:
        with ablated_heads(model, heads_off, means):
            scores = in_context_scores(model, probes)
        ablated.append({"heads": [f"L{layer}H{head}" for layer, head in heads_off], **scores,
                        "change": {k: scores[k] - baseline[k] for k in scores}})
    return {"ablation": mode, "intact": baseline, "head_scores": heads, "ablated": ablated}


COLUMNS = (("icl_score", "icl_score"), ("repeat_loss", "repeat loss"), ("random_second_copy_loss", "random 2nd copy"),
           ("random_icl_score", "random icl_score"))


def ablation_lines(record: dict) -> list[str]:
    """A table for the console: the intact model, then each ablation (the heads' own scores beside them)."""
    columns = [(key, title) for key, title in COLUMNS if key in record["intact"]]
    scores = record["head_scores"]
    lines = [f"{record['ablation']} ablation at step {record['step']} (nats/token; icl_score = loss on the repeat - "
             "on its first occurrence; random: random tokens repeated, the same on the second copy - the first)",
             f"{'heads off':<16}{'induction':>10}{'prev_tok':>10}" + "".join(f"{t:>18}" for _, t in columns)]
    lines.append(f"{'none':<16}{'':>10}{'':>10}" + "".join(f"{record['intact'][k]:>18.3f}" for k, _ in columns))
    for row in record["ablated"]:
        label = ",".join(row["heads"])
        if len(row["heads"]) == 1:
            layer, head = (int(x) for x in row["heads"][0][1:].split("H"))
            circuit = f"{scores['induction'][layer][head]:>10.2f}{scores['prev_token'][layer][head]:>10.2f}"
        else:
            circuit = f"{'':>10}{'':>10}"
        lines.append(f"{label:<16}{circuit}" + "".join(f"{row[k]:>11.3f} ({row['change'][k]:+.2f})"
                                                      for k, _ in columns))
    return lines
