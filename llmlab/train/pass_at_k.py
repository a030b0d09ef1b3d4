"""pass@k on held-out tasks: how often one of k sampled replies is right (Chen et al. 2021, "Evaluating Large
Language Models Trained on Code").

pass@1 is the greedy reply's exact match (task accuracy). pass@k draws n >= k replies per prompt at a temperature,
counts the c right ones, and scores the prompt 1 - C(n-c, k) / C(n, k): the chance that k of the n, drawn without
replacement, hold at least one right reply. Averaged over prompts that is an unbiased estimate of pass@k, with less
variance than drawing exactly k; with n = k it is 1 when any of the k is right.

What reinforcement learning from a verifiable reward is known to do on a small model is *sharpen*: raise pass@1
towards the pass@k the model already has, more than raise pass@k itself (Yue et al. 2025).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import torch

from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tasks import Task, group_of, is_correct
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.train.task_eval import BATCH_SIZE, MAX_REPLY_TOKENS, task_replies


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k for one prompt from n replies of which c are right."""
    if not 0 <= c <= n:
        raise ValueError(f"c={c} right replies of n={n}: expected 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is larger than the n={n} replies drawn per prompt (or below 1)")
    if n - c < k:  # every draw of k holds a right reply
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def sampled_replies(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device,
                    n: int, temperature: float = 1.0, seed: int = 0, max_new_tokens: int = MAX_REPLY_TOKENS,
                    batch_size: int = BATCH_SIZE) -> list[list[str]]:
    """n replies per task drawn at `temperature` (no top-k or top-p), from a generator seeded with `seed` on the
    CPU, so the same model, tasks and seed give the same replies."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature} (pass@1 is the greedy reply)")
    was_training = model.training
    model.eval()
    limit = model.cfg.context_length
    prompts = [template.prompt([Message("user", t.prompt)])[-(limit - 1):] for t in tasks for _ in range(n)]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_id=template.end_id)
    generator = torch.Generator(device=device).manual_seed(seed)
    flat: list[str] = []
    try:
        for first in range(0, len(prompts), batch_size):
            batch, mask = pad_prompts(prompts[first:first + batch_size], template.end_id, device)
            out = generate(model, batch, sampling, generator=generator, attention_mask=mask)[:, batch.shape[1]:]
            flat += [template.decode(ids) for ids in out.tolist()]
    finally:
        model.train(was_training)
    return [flat[i * n:(i + 1) * n] for i in range(len(tasks))]


@dataclass
class PassScores:
    """Per prompt, in the order of the tasks: the greedy reply right (0/1) and the pass@k estimate."""

    tasks: list[Task]
    greedy: list[float]  # pass@1
    sampled: list[float]  # pass@k
    k: int
    n: int  # replies drawn per prompt
    right: list[int]  # right replies of the n, per prompt

    def means(self) -> dict[str, dict[str, float]]:
        """{"pass@1": {group: mean}, "pass@k": {...}} over "all", each family and each graded family's level."""
        groups: dict[str, list[int]] = {"all": list(range(len(self.tasks)))}
        for i, task in enumerate(self.tasks):
            groups.setdefault(task.family, []).append(i)
            if task.level:
                groups.setdefault(group_of(task), []).append(i)
        return {name: {g: sum(values[i] for i in idx) / len(idx) for g, idx in groups.items()}
                for name, values in (("pass@1", self.greedy), (f"pass@{self.k}", self.sampled))}


def pass_scores(model: torch.nn.Module, template: ChatTemplate, tasks: list[Task], device: torch.device, k: int,
                n: int | None = None, temperature: float = 1.0, seed: int = 0) -> PassScores:
    """Greedy and n sampled replies (n = k by default) to every task, scored by exact match."""
    n = k if n is None else n
    if not tasks:
        raise ValueError("pass@k needs at least one task")
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} replies drawn per prompt: draw at least k")
    greedy = [float(is_correct(t, r)) for t, r in zip(tasks, task_replies(model, template, tasks, device))]
    replies = sampled_replies(model, template, tasks, device, n, temperature, seed)
    right = [sum(is_correct(t, r) for r in rs) for t, rs in zip(tasks, replies)]
    return PassScores(tasks, greedy, [pass_at_k(n, c, k) for c in right], k, n, right)
