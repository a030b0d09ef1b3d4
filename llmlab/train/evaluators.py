"""Evaluators: what the trainer asks at each evaluation besides the validation loss.

An evaluator is called with the step and the metrics of this evaluation so far, and returns more metrics (it may
return none and write files instead). The loop knows nothing else of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from llmlab.data.chat_template import ChatTemplate
from llmlab.data.induction import SpanProbe
from llmlab.data.tasks import Task
from llmlab.files import write_atomic
from llmlab.train.distributed import Distributed
from llmlab.train.sinks import MetricSinks
from llmlab.train.task_eval import task_accuracy


class Evaluator(Protocol):
    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]: ...


class Samples:
    """Generated text at each evaluation, into samples.txt and TensorBoard's text tab (rank 0 writes).

    The text is generated on every rank: a sharded model's forward needs them all."""

    def __init__(self, generate: Callable[[int], str], sinks: MetricSinks, path: Path, place: Distributed,
                 resume_step: int | None = None):
        self.generate, self.sinks, self.path, self.place = generate, sinks, path, place
        if place.is_main and resume_step is not None:
            truncate_samples(path, resume_step)  # the resumed run samples those steps again

    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        sample = self.generate(step)
        if self.place.is_main:
            self.sinks.log_text(step, "samples", sample)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"--- step {step} (val/loss {metrics['val/loss']:.4f})\n{sample}\n")
        return {}


class TaskAccuracy:
    """Greedy replies to held-out tasks scored by exact match: eval/task_accuracy, and per family."""

    def __init__(self, model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device):
        self.model, self.template, self.tasks, self.device = model, template, tasks, device

    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        scores = task_accuracy(self.model, self.template, self.tasks, self.device)
        return {f"eval/task_accuracy{'' if k == 'all' else '/' + k}": v for k, v in scores.items()}


class PassAtK:
    """pass@1 (greedy) and pass@k (k replies per held-out task at temperature 1, the same seeded draws at every
    evaluation) by exact match: eval/pass@1 and eval/pass@<k>, per family and per graded family's level."""

    def __init__(self, model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device,
                 k: int, temperature: float = 1.0):
        self.model, self.template, self.tasks, self.device = model, template, tasks, device
        self.k, self.temperature = k, temperature

    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        from llmlab.train.pass_at_k import pass_scores

        means = pass_scores(self.model, self.template, self.tasks, self.device, self.k,
                            temperature=self.temperature).means()
        return {f"eval/{name}{'' if group == 'all' else '/' + group}": value
                for name, by_group in means.items() for group, value in by_group.items()}


def task_evaluators(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device,
                    pass_k: int = 0) -> list[Evaluator]:
    """What a chat run scores its held-out tasks with: task accuracy, and pass@k when pass_k > 0."""
    if not tasks:
        return []
    found: list[Evaluator] = [TaskAccuracy(model, template, tasks, device)]
    if pass_k:
        found.append(PassAtK(model, template, tasks, device, pass_k))
    return found


class InContextScore:
    """In-context learning on documents with a repeated span (data=induction), in nats per token:
    eval/first_loss on the span's first occurrence, eval/repeat_loss on its copy later in the document, and
    eval/icl_score = repeat_loss - first_loss (later minus earlier, as Olsson et al. define it: the more negative,
    the more the context helps; it falls abruptly when induction heads form)."""

    def __init__(self, model: torch.nn.Module, probe: SpanProbe, device: torch.device):
        self.model, self.device = model, device
        self.ids, self.first, self.repeat = probe.ids.to(device), probe.first.to(device), probe.repeat.to(device)

    @torch.no_grad()
    def __call__(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(self.ids)[:, :-1].float()  # position j predicts the document's token j
        finally:
            self.model.train(was_training)
        losses = F.cross_entropy(logits.flatten(0, 1), self.ids[:, 1:].flatten(), reduction="none"
                                 ).view(self.first.shape)
        first, repeat = losses[self.first].mean().item(), losses[self.repeat].mean().item()
        return {"eval/icl_score": repeat - first, "eval/repeat_loss": repeat, "eval/first_loss": first}


SAMPLE_HEADER = re.compile(r"^--- step (\d+)\b")


def truncate_samples(path: Path, step: int) -> None:
    """samples.txt: keep the sections headed `--- step N` with N <= step."""
    if not path.exists():
        return
    kept, keep = [], True
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        header = SAMPLE_HEADER.match(line)
        if header:
            keep = int(header[1]) <= step
        if keep:
            kept.append(line)
    write_atomic(path, "".join(kept))
