"""Task accuracy: greedy replies to held-out embedded tasks, scored by exact match (llmlab/data/tasks.py)."""

from __future__ import annotations

import torch

from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tasks import Task, accuracy
from llmlab.model.generation import SamplingConfig, generate, pad_prompts

MAX_REPLY_TOKENS = 48  # the longest answer is 33 characters
BATCH_SIZE = 64  # prompts per generate call: bounds the KV cache of a large eval set


@torch.no_grad()
def task_replies(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device,
                 max_new_tokens: int = MAX_REPLY_TOKENS, batch_size: int = BATCH_SIZE) -> list[str]:
    """Each task's greedy reply, up to <|end|>, the prompts left-padded into batches of batch_size."""
    was_training = model.training
    model.eval()
    limit = model.cfg.context_length
    prompts = [template.prompt([Message("user", t.prompt)])[-(limit - 1):] for t in tasks]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_id=template.end_id)
    replies: list[str] = []
    try:
        for first in range(0, len(prompts), batch_size):
            batch, mask = pad_prompts(prompts[first:first + batch_size], template.end_id, device)  # pad is masked
            out = generate(model, batch, sampling, attention_mask=mask)[:, batch.shape[1]:].tolist()
            replies += [template.decode(ids) for ids in out]
    finally:
        model.train(was_training)
    return replies


def task_accuracy(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task],
                  device: torch.device) -> dict[str, float]:
    """Exact-match accuracy per family and "all"."""
    return accuracy(tasks, task_replies(model, template, tasks, device))
