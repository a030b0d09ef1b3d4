"""A model's own replies to training tasks, scored by the verifier: the data of on-policy post-training.

`python -m llmlab.sample_tasks` draws replies of a trained run to train-split tasks and writes them here, one JSON
record a line: the task (family, level, prompt, answer, wrong) and its replies with whether each is right. Two
ways to learn from them, both chosen with `data.samples=<file>`:

- rejection-sampling fine-tuning (`stage=sft data=tasks`): SFT on the replies the verifier accepted, one
  conversation per prompt the model solved at least once (a right reply is the answer, so more copies of it
  would only weight the prompts it already finds easy);
- on-policy preference pairs (`stage=dpo data=task_prefs`): for each prompt with both kinds of reply, the answer
  chosen and each distinct wrong reply rejected, so DPO pushes down the mistakes this model makes, not made-up ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.data.chat import Message, PreferencePair
from llmlab.data.tasks import Task, is_correct

TASK_FIELDS = ("family", "prompt", "answer")  # a record's required task fields; level and wrong are optional


@dataclass
class TaskSamples:
    task: Task
    replies: list[str]  # as sampled, up to the end marker

    @property
    def right(self) -> list[bool]:
        return [is_correct(self.task, r) for r in self.replies]


def write_task_samples(path: Path, samples: list[TaskSamples]) -> None:
    from llmlab.files import write_atomic

    lines = [json.dumps({**asdict(s.task), "replies": s.replies, "right": s.right}) for s in samples]
    write_atomic(Path(path), "".join(line + "\n" for line in lines))


def read_task_samples(path: str | Path) -> list[TaskSamples]:
    """The records of a samples file; a malformed one is one line naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.samples={path}: no such file (write one with python -m llmlab.sample_tasks)")
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: expected a JSON object with {', '.join(TASK_FIELDS)} and replies")
        for name in TASK_FIELDS:
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise ConfigError(f"{where}: the record has no {name!r} (a non-empty string); "
                                  f"a record needs {', '.join(TASK_FIELDS)} and replies")
        replies = record.get("replies")
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise ConfigError(f"{where}: 'replies' must be a list of strings")
        level = record.get("level", 0)
        if not isinstance(level, int):
            raise ConfigError(f"{where}: 'level' must be an integer, got {level!r}")
        task = Task(record["family"], record["prompt"], record["answer"], record.get("wrong") or "", level)
        found.append(TaskSamples(task, replies))
    if not found:
        raise ConfigError(f"data.samples={path}: no records")
    return found


def rejection_sampled(samples: list[TaskSamples]) -> list[tuple[Message, ...]]:
    """Conversations of the prompts with at least one right reply (rejection-sampling fine-tuning)."""
    return [(Message("user", s.task.prompt), Message("assistant", s.task.answer)) for s in samples if any(s.right)]


def on_policy_pairs(samples: list[TaskSamples]) -> list[PreferencePair]:
    """For each prompt with a right and a wrong reply: the answer over each distinct wrong reply."""
    pairs = []
    for s in samples:
        if not any(s.right):
            continue
        wrong = dict.fromkeys(r.strip() for r, ok in zip(s.replies, s.right) if not ok)
        pairs += [PreferencePair((Message("user", s.task.prompt),), s.task.answer, w) for w in wrong if w]
    return pairs
