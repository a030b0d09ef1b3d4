"""GRPO's rewards: a list of named, batched, weighted functions whose weighted sum is a completion's reward.

Built in: `correct` (data=tasks: 1 for an exact match of the task's answer) and `format` (1 for a completion that
ends with <|end|>, weighted by stage.format_reward). The user's come from stage.rewards=[{name, _target_, weight}]:
`_target_` is a module.function, located with Hydra's own utilities and called once per batch of completions as

    f(prompts: list[str], completions: list[str], records: list[dict]) -> sequence of numbers, one per completion

with the user's last message, the decoded completion and the record's fields (a task's family, prompt, answer,
wrong; a data=chat record as read from its file). Each term is logged as grpo/reward/<name> (before its weight).
A function that raises (or calls sys.exit), returns a non-number, the wrong count or a value that is not finite in
float32 stops the run with one line naming the function, the record and the completion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from hydra.utils import get_method

from llmlab.config.errors import ConfigError
from llmlab.data.tasks import Task, is_correct

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # a reward past it is inf once it is a tensor

Batched = Callable[[list[str], list[str], list[dict]], Sequence[float]]


class RewardError(ConfigError):
    """A reward function failed on a completion: the run stops with one line naming the function and record."""


@dataclass(frozen=True)
class PromptRecord:
    ids: list[int]  # the chat template's prompt, ending with <|assistant|>
    prompt: str  # the user's last message
    fields: dict  # what the reward functions read: a task's fields or the file's record
    where: str  # for a reward that fails: which record it was


@dataclass(frozen=True)
class RewardFunction:
    name: str
    fn: Batched
    weight: float
    origin: str  # how the error line names it: stage.rewards[0] (my_rewards.vowels), or the built-in's name


def locate(target: str, field: str) -> Batched:
    """module.function, imported as Hydra resolves a _target_; any failure of the import is one line."""
    try:
        fn = get_method(target)
    except BaseException as e:  # noqa: BLE001 (a syntax error, or whatever the module raises or exits with on import)
        if isinstance(e, KeyboardInterrupt):
            raise
        cause = e.__cause__ or e
        raise ConfigError(f"{field}={target}: cannot import it ({type(cause).__name__}: "
                          f"{' '.join(str(cause).split())})") from None
    return fn


def task_correct(prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
    """1 for a completion that is the task's answer exactly (llmlab.data.tasks.is_correct), else 0."""
    return [float(is_correct(Task(**r), c)) for r, c in zip(records, completions, strict=True)]


class Rewards:
    """Scores a batch of completions: the weighted sum per completion, and each function's own mean."""

    def __init__(self, functions: list[RewardFunction], format_weight: float):
        names = [f.name for f in functions]
        if len(set(names)) != len(names) or "format" in names:
            raise ConfigError(f"stage.rewards: names must be distinct and not 'format', got {names}")
        self.functions, self.format_weight = functions, format_weight

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions] + ["format"]

    def __call__(self, records: list[PromptRecord], completions: list[str],
                 ended: list[bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """rewards (N,) and each term's values (N,) by name."""
        terms = {f.name: self.score(f, records, completions) for f in self.functions}
        terms["format"] = torch.tensor([float(e) for e in ended], dtype=torch.float64)
        weights = [f.weight for f in self.functions] + [self.format_weight]
        total = torch.zeros(len(completions), dtype=torch.float64)
        for w, values in zip(weights, terms.values(), strict=True):
            total += w * values
        return total.float(), {k: v.float() for k, v in terms.items()}

    @staticmethod
    def score(f: RewardFunction, records: list[PromptRecord], completions: list[str]) -> torch.Tensor:
        def failed(i: int, what: str) -> RewardError:
            return RewardError(f"{f.origin} {what} on {records[i].where} (completion {completions[i]!r}, "
                               f"record {records[i].fields!r})")

        try:
            values = f.fn([r.prompt for r in records], list(completions), [r.fields for r in records])
        except BaseException as e:  # noqa: BLE001 (the user's code: whatever it raises, or sys.exit, is one line)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise RewardError(f"{f.origin} raised {type(e).__name__}: {' '.join(str(e).split())} on a batch of "
                              f"{len(completions)} completions, the first {records[0].where} (completion "
                              f"{completions[0]!r})") from None
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise RewardError(f"{f.origin} returned {type(values).__name__} {str(values)[:80]!r}, not a number per "
                              f"completion ({e})") from None
        if len(values) != len(completions):
            raise RewardError(f"{f.origin} returned {len(values)} values for {len(completions)} completions")
        for i, v in enumerate(values):
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                raise failed(i, f"returned {v} (a reward must be a finite float32)")
        return torch.tensor(values, dtype=torch.float64)
