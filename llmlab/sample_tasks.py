"""`python -m llmlab.sample_tasks run=<run dir> data=tasks data.families=[sum] samples=8 out=<file>`: a run's own
replies to the train split's tasks, scored by exact match, written for on-policy post-training
(llmlab/data/task_samples.py): `stage=sft data=tasks data.samples=<file>` is rejection-sampling fine-tuning,
`stage=dpo data=task_prefs data.samples=<file>` DPO on pairs of its right and wrong replies.

data.train_tasks prompts, `samples` replies each at `temperature`: data.train_tasks x samples sampled completions,
the figure to match when comparing with GRPO (batch x group size x steps).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import SampleTasksConfig
from llmlab.config.errors import exit_on_config_error
from llmlab.store import CONF_DIR, to_dataclass


def sample_tasks(cfg: SampleTasksConfig) -> dict:
    from llmlab.data.chat_template import ChatTemplate
    from llmlab.data.post_training import tasks_of
    from llmlab.data.task_samples import TaskSamples, on_policy_pairs, rejection_sampled, write_task_samples
    from llmlab.load import load_trained
    from llmlab.train.device import pick_device
    from llmlab.train.pass_at_k import sampled_replies

    device = pick_device(cfg.device)
    model, tokenizer, checkpoint = load_trained(cfg.run, device, cfg.checkpoint)
    template = ChatTemplate(tokenizer)
    model.resize_vocab(template.vocab_size)
    model = model.to(device).eval()
    tasks = tasks_of(cfg.data, "train", cfg.data.train_tasks)
    replies = sampled_replies(model, template, tasks, device, cfg.samples, cfg.temperature, cfg.seed)
    samples = [TaskSamples(t, r) for t, r in zip(tasks, replies)]
    write_task_samples(Path(cfg.out), samples)
    right = [sum(s.right) for s in samples]
    solved = Counter(s.task.family for s, r in zip(samples, right) if r)
    return {"checkpoint": str(checkpoint), "out": cfg.out, "prompts": len(tasks),
            "sampled_completions": len(tasks) * cfg.samples, "right_share": sum(right) / (len(tasks) * cfg.samples),
            "solved_prompts": sum(1 for r in right if r), "solved_per_family": dict(solved),
            "rejection_sampled": len(rejection_sampled(samples)), "pairs": len(on_policy_pairs(samples))}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample_tasks")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        found = sample_tasks(to_dataclass(cfg))
    print(f"{found['out']}: {found['prompts']} train prompts x {found['sampled_completions'] // found['prompts']} "
          f"replies = {found['sampled_completions']} sampled completions from {found['checkpoint']}; "
          f"{found['right_share']:.3f} of them right; {found['solved_prompts']} prompts solved at least once "
          f"({found['rejection_sampled']} conversations for rejection sampling), {found['pairs']} on-policy pairs")


if __name__ == "__main__":
    quote_arguments()
    main()
