"""Score GRPO runs against their SFT start on the same held-out tasks, paired.

    python experiments/grpo/levers.py <sft run> <out.json> "name=<grpo run>" ... [--tasks 400] [--k 8]

For the start and each run's final checkpoint: greedy pass@1 per held-out task (exact match, the tasks
`python -m llmlab.evaluate` scores: the test split after the validation tasks) and, with --k, pass@k from k samples
at temperature 1 (the unbiased estimator of Chen et al. 2021 with n = k: right in any of the k). The difference of
each run's pass@1 from the start's is paired over the same tasks, with a 95% bootstrap interval over tasks.
Writes the summary (per run: pass@1, per family, difference, interval, and each run's curves' last values) as
JSON; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llmlab.config.schema import TasksDataConfig
from llmlab.data.chat import Message
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.post_training import held_out_tasks
from llmlab.data.tasks import is_correct
from llmlab.load import load_trained
from llmlab.model.generation import SamplingConfig, generate, pad_prompts
from llmlab.train.task_eval import task_replies

BOOTSTRAP = 10_000


def scored(run: str, n_tasks: int, k: int) -> tuple[list[str], list[float], list[float] | None]:
    """(families, greedy right per task, any-of-k right per task or None)."""
    model, tokenizer, _ = load_trained(run, "cpu")
    template = ChatTemplate(tokenizer)
    model.resize_vocab(template.vocab_size)
    model.eval()
    _, tasks = held_out_tasks(TasksDataConfig(eval_tasks=n_tasks))
    greedy = [float(is_correct(t, r)) for t, r in zip(tasks, task_replies(model, template, tasks, "cpu"),
                                                      strict=True)]
    any_of_k = None
    if k:
        gen = torch.Generator().manual_seed(0)
        sampling = SamplingConfig(max_new_tokens=48, temperature=1.0, stop_id=template.end_id)
        any_of_k = []
        with torch.no_grad():
            for first in range(0, len(tasks), 16):
                chunk = tasks[first:first + 16]
                ids, mask = pad_prompts([template.prompt([Message("user", t.prompt)]) for t in chunk],
                                        template.end_id)
                out = generate(model, ids.repeat_interleave(k, 0), sampling, gen,
                               attention_mask=mask.repeat_interleave(k, 0))[:, ids.shape[1]:].tolist()
                texts = [template.decode(row) for row in out]
                any_of_k += [float(any(is_correct(t, texts[i * k + j]) for j in range(k)))
                             for i, t in enumerate(chunk)]
    return [t.family for t in tasks], greedy, any_of_k


def paired_interval(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """mean(b - a) and its 95% bootstrap interval over the tasks (resampled together)."""
    diff = b - a
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(diff), (BOOTSTRAP, len(diff)), generator=gen)
    means = diff[idx].mean(1)
    return diff.mean().item(), means.quantile(0.025).item(), means.quantile(0.975).item()


def last_logged(run: str) -> dict:
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    keys = ("grpo/reward_mean", "grpo/zero_spread_share", "grpo/kl", "grpo/entropy", "grpo/completion_length")
    return {"steps": rows[-1]["step"], "train_wall_s": max(r.get("perf/wall_s", 0) for r in rows),
            **{k: [r for r in rows if k in r][-1][k] for k in keys if any(k in r for r in rows)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start")
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="name=run directory")
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--k", type=int, default=0)
    args = parser.parse_args()
    families, base, base_k = scored(args.start, args.tasks, args.k)
    base_t = torch.tensor(base)
    summary = {"start": args.start, "tasks": args.tasks, "start_pass@1": base_t.mean().item(), "runs": {}}
    if base_k is not None:
        summary[f"start_pass@{args.k}"] = sum(base_k) / len(base_k)
    print(f"| run | steps | train s | pass@1 | vs start (95% paired interval) | zero-spread share | KL |\n"
          f"|---|---|---|---|---|---|---|\n| SFT start | | | {base_t.mean().item():.3f} | | | |")
    for spec in args.runs:
        name, _, run = spec.partition("=")
        _, right, _ = scored(run, args.tasks, 0)
        mean, low, high = paired_interval(base_t, torch.tensor(right))
        per_family = {f: sum(r for r, g in zip(right, families, strict=True) if g == f) / families.count(f)
                      for f in sorted(set(families))}
        logged = last_logged(run)
        summary["runs"][name] = {"run": run, "pass@1": sum(right) / len(right), "per_family": per_family,
                                 "difference": mean, "interval": [low, high], **logged}
        print(f"| {name} | {logged['steps']} | {logged['train_wall_s']:.0f} | {sum(right) / len(right):.3f} | "
              f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] | {logged.get('grpo/zero_spread_share', float('nan')):.2f} | "
              f"{logged.get('grpo/kl', float('nan')):.3f} |")
    summary["start_per_family"] = {f: sum(r for r, g in zip(base, families, strict=True) if g == f)
                                   / families.count(f) for f in sorted(set(families))}
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
