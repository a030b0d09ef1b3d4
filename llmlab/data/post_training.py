"""Data for the chat stages: conversations (SFT) or preference pairs (DPO), encoded with the chat template.

`data=tasks` / `data=task_prefs` come from the embedded task generator (llmlab/data/tasks.py) and carry
held-out tasks scored by exact match; `data=chat` / `data=prefs` read the user's files (llmlab/data/chat.py),
whose last val_fraction validates; `data=hf data.kind=hf_chat|hf_prefs` reads the same records from a Hugging
Face dataset's rows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ChatDataConfig, HFDataConfig, TasksDataConfig
from llmlab.data.chat import (
    Message,
    PreferencePair,
    load_conversations,
    load_preferences,
    parse_conversation,
    parse_preference,
)
from llmlab.data.chat_batches import Item, truncate
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.hf import open_source, records
from llmlab.data.task_samples import on_policy_pairs, read_task_samples, rejection_sampled
from llmlab.data.tasks import Task, make_tasks


@dataclass
class ChatItems:
    train: list[Item]
    val: list[Item]
    eval_tasks: list[Task]  # scored by generation at each eval; empty for the user's own data
    stats: dict


def tasks_of(data: TasksDataConfig, split: str, n: int) -> list[Task]:
    chosen = {"families": tuple(data.families)} if data.families else {}
    if data.levels:
        chosen["levels"] = tuple(data.levels)
    return make_tasks(n, split, seed=data.seed, **chosen)


def held_out_tasks(data: TasksDataConfig) -> tuple[list[Task], list[Task]]:
    """(validation, eval) tasks, both from the test split; the eval ones are scored by generation."""
    held_out = tasks_of(data, "test", data.val_tasks + data.eval_tasks)
    return held_out[: data.val_tasks], held_out[data.val_tasks:]


def task_conversation(task: Task) -> tuple[Message, ...]:
    return Message("user", task.prompt), Message("assistant", task.answer)


def task_preference(task: Task) -> PreferencePair:
    return PreferencePair((Message("user", task.prompt),), task.answer, task.wrong)


def encode_items(template: ChatTemplate, records: list, max_len: int) -> tuple[list[Item], int]:
    """Items of encoded sequences (one per conversation, chosen and rejected per pair); how many were cut to
    max_len + 1 tokens (inputs and targets are one shorter)."""
    items, cut = [], 0
    for record in records:
        if isinstance(record, PreferencePair):
            item = (template.reply(record.prompt, record.chosen), template.reply(record.prompt, record.rejected))
        else:
            item = (template.encode(record),)
        if any(len(e.ids) > max_len + 1 for e in item):
            cut += 1
            item = tuple(truncate(e, max_len + 1) for e in item)
        if all(any(e.loss_mask[1:]) for e in item):  # a reply cut away entirely teaches nothing
            items.append(item)
    return items, cut


def split(records: list, val_fraction: float, what: str) -> tuple[list, list]:
    n_val = max(1, round(len(records) * val_fraction))
    if len(records) - n_val < 1:
        raise ConfigError(f"data.paths: {len(records)} {what} cannot be split into train and validation")
    return records[:-n_val], records[-n_val:]


def prepare_chat_items(data, template: ChatTemplate, max_len: int, cache_dir: Path) -> ChatItems:
    kind = data.kind  # RunConfig has checked it fits the stage
    eval_tasks: list[Task] = []
    if isinstance(data, TasksDataConfig):
        val_tasks, eval_tasks = held_out_tasks(data)
        convert = task_preference if kind == "task_prefs" else task_conversation
        val_records = [convert(t) for t in val_tasks]
        if data.samples:  # on-policy: the model's own verified replies (llmlab/data/task_samples.py)
            samples = read_task_samples(data.samples)
            train_records = on_policy_pairs(samples) if kind == "task_prefs" else rejection_sampled(samples)
            if not train_records:
                raise ConfigError(f"data.samples={data.samples}: no prompt has a right reply"
                                  f"{' and a wrong one' if kind == 'task_prefs' else ''}: nothing to train on")
        else:
            train_records = [convert(t) for t in tasks_of(data, "train", data.train_tasks)]
    elif isinstance(data, HFDataConfig):  # kind hf_chat | hf_prefs: rows of a Hugging Face dataset
        train_rows, val_rows = records(open_source(data, cache_dir))
        parse = parse_preference if kind == "hf_prefs" else parse_conversation
        where = f"data.path={data.path}"
        train_records = [parse(row, f"{where}: train row {i}") for i, row in enumerate(train_rows)]
        val_records = [parse(row, f"{where}: validation row {i}") for i, row in enumerate(val_rows)]
        if not train_records or not val_records:
            raise ConfigError(f"{where}: {len(train_records)} training and {len(val_records)} validation records; "
                              "both must be at least one (lower data.val_fraction's period or add rows)")
    else:
        assert isinstance(data, ChatDataConfig)
        records_ = load_preferences(data.paths) if kind == "prefs" else load_conversations(data.paths)
        train_records, val_records = split(records_, data.val_fraction, "records")
    train, cut_train = encode_items(template, train_records, max_len)
    val, cut_val = encode_items(template, val_records, max_len)
    if cut_train + cut_val:
        print(f"warning: {cut_train + cut_val} samples are longer than model.context_length={max_len} and were "
              "cut (samples whose reply was cut away entirely are dropped)", file=sys.stderr)
    if not train or not val:
        raise ConfigError(f"data={kind}: no training or validation sample has a reply within "
                          f"model.context_length={max_len}")
    lengths = [len(e.ids) for item in train for e in item]
    stats = {"kind": kind, "train_samples": len(train), "val_samples": len(val), "cut_samples": cut_train + cut_val,
             "eval_tasks": len(eval_tasks), "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths),
             "target_tokens": sum(sum(e.loss_mask) for item in train for e in item)}
    return ChatItems(train, val, eval_tasks, stats)
