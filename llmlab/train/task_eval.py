"""Task accuracy: greedy replies to held-out embedded tasks, scored by exact match (llmlab/data/tasks.py)."""

from __future__ import annotations

import torch

from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tasks import Task, accuracy
from llmlab.model.generation import SamplingConfig, generate

MAX_REPLY_TOKENS = 48  # the longest answer is 33 characters


@torch.no_grad()
def task_replies(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device,
                 max_new_tokens: int = MAX_REPLY_TOKENS) -> list[str]:
    """Each task's greedy reply, up to <|end|>. Prompts of equal length share a batch (no padding needed)."""
    was_training = model.training
    model.eval()
    limit = model.cfg.context_length
    prompts = [template.prompt([Message("user", t.prompt)])[-(limit - 1):] for t in tasks]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_id=template.end_id)
    replies: list[str] = [""] * len(tasks)
    try:
        for length in sorted({len(p) for p in prompts}):
            members = [i for i, p in enumerate(prompts) if len(p) == length]
            batch = torch.tensor([prompts[i] for i in members], device=device)
            out = generate(model, batch, sampling, torch.Generator(device))[:, length:].tolist()
            for i, ids in zip(members, out, strict=True):
                replies[i] = template.decode(ids)
    finally:
        model.train(was_training)
    return replies


def task_accuracy(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task],
                  device: torch.device) -> dict[str, float]:
    """Exact-match accuracy per family and "all"."""
    return accuracy(tasks, task_replies(model, template, tasks, device))
