"""Instruction tasks: deterministic, disjoint splits, balanced, answers checked independently, corpus characters."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from llmlab.data.synthetic import Language, sample_documents
from llmlab.data.tasks import FAMILIES, NUMBER_WORDS, Task, accuracy, is_correct, make_tasks, split_of

LANGUAGE = Language()
N = 3000


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Task]]:
    return {split: make_tasks(N, split, seed=0) for split in ("train", "test")}


def body(prompt: str) -> list[str]:
    """The words after the instruction sentence."""
    return prompt.split(". ", 1)[1].split()


def test_same_seed_same_tasks_other_seed_other_tasks():
    assert make_tasks(200, "train", seed=3) == make_tasks(200, "train", seed=3)
    assert make_tasks(200, "train", seed=3) != make_tasks(200, "train", seed=4)
    assert make_tasks(50, "test", seed=3) == make_tasks(200, "test", seed=3)[:50]  # draws are sequential


def test_splits_share_no_prompt(splits):
    train = {t.prompt for t in splits["train"]}
    test = {t.prompt for t in splits["test"]}
    assert not train & test
    # by construction: another seed's test prompts are still not train prompts
    assert not {t.prompt for t in make_tasks(N, "test", seed=1)} & train
    assert all(split_of(t.prompt) == split for split, tasks in splits.items() for t in tasks)


def test_families_are_balanced_in_every_prefix(splits):
    assert Counter(t.family for t in splits["train"]) == {f: N // len(FAMILIES) for f in FAMILIES}
    assert [t.family for t in make_tasks(12, "test")] == [FAMILIES[j % len(FAMILIES)] for j in range(12)]
    only = make_tasks(7, "train", families=("count", "pattern"))
    assert [t.family for t in only] == ["count", "pattern"] * 3 + ["count"]


# Independent checks: each parses the prompt by the language's grammar, not by the generator's code.
NAME = r"[A-Z][a-z]{3}"
PLACES = "|".join(LANGUAGE.places)
NOUNS = {n for _, nouns, _ in LANGUAGE.classes for n in nouns}
VERBS, ADJECTIVES = ("|".join(w for c in LANGUAGE.classes for w in c[i]) for i in (0, 2))
SENTENCE = re.compile(  # the three sentence kinds; groups: intro (3), gift (3), event (4)
    rf"({NAME}) and ({NAME}) went to the ({PLACES})\."
    rf"|({NAME}) gave the ({'|'.join(NOUNS)}) to ({NAME})\."
    rf"|({NAME}) ({VERBS}) the ({ADJECTIVES}) ({'|'.join(NOUNS)})\."
)


def check_copy(task: Task) -> None:
    sentence = task.prompt.removeprefix("Repeat the sentence. ")
    assert SENTENCE.fullmatch(sentence) and task.answer == sentence
    assert SENTENCE.fullmatch(task.wrong)
    diff = [(a, b) for a, b in zip(task.answer.split(), task.wrong.split(), strict=True) if a != b]
    assert len(diff) == 1  # one word swapped


def check_reverse(task: Task) -> None:
    words = body(task.prompt)
    assert len(words) == 3 and task.answer.split()[::-1] == words
    assert sorted(task.wrong.split()) == sorted(words)  # another order of the same words


def check_count(task: Task) -> None:
    words = body(task.prompt)
    assert NUMBER_WORDS.index(task.answer) + 1 == len(words)
    assert abs(NUMBER_WORDS.index(task.wrong) - NUMBER_WORDS.index(task.answer)) == 1


def check_recall(task: Task) -> None:
    intro, event, question = re.fullmatch(r"(.+?\.) (.+?\.) (Name .+\.)", task.prompt).groups()
    first, second, place = SENTENCE.fullmatch(intro).groups()[:3]
    giver, noun, receiver, subject, verb, adj, thing = SENTENCE.fullmatch(event).groups()[3:]
    cast = {first, second}
    if question == "Name the place.":
        assert task.answer == f"the {place}"
        assert task.wrong.removeprefix("the ") in LANGUAGE.places
    elif giver:
        asked = {f"Name who gave the {noun}.": giver, f"Name who got the {noun}.": receiver}
        assert task.answer == asked[question] and task.wrong == (cast - {task.answer}).pop()
    else:
        assert question == f"Name who {verb} the {adj} {thing}."
        assert task.answer == subject and task.wrong == (cast - {subject}).pop()


def check_pattern(task: Task) -> None:
    words = body(task.prompt)
    period = next(p for p in range(1, len(words)) if all(words[i] == words[i - p] for i in range(p, len(words))))
    assert 2 <= period <= 3 and len(words) >= 2 * period
    assert task.answer == words[len(words) - period]
    assert task.wrong in words and task.answer in NOUNS | set(LANGUAGE.places)


CHECKS = {"copy": check_copy, "reverse": check_reverse, "count": check_count, "recall": check_recall,
          "pattern": check_pattern}


def test_every_answer_checks_out_and_every_wrong_reply_is_wrong(splits):
    assert set(CHECKS) == set(FAMILIES)
    for task in splits["train"] + splits["test"]:
        CHECKS[task.family](task)
        assert task.wrong != task.answer and not is_correct(task, task.wrong)
        assert is_correct(task, task.answer) and len(task.answer) <= 40
        assert len(task.prompt) + len(task.answer) <= 110  # fits the tiny model's 128-token context


def test_every_character_occurs_in_the_corpus(splits):
    docs, _ = sample_documents(LANGUAGE, 3000, seed=1234)
    corpus = set("".join(docs))
    used = {c for t in splits["train"] + splits["test"] for c in t.prompt + t.answer + t.wrong}
    assert used <= corpus, f"characters the language never writes: {sorted(used - corpus)}"


def test_is_correct_strips_whitespace_and_reads_only_the_first_line():
    prompt = "Bako and Tilu went to the lake. Tilu ate the ripe pear. Name the place."
    task = Task("recall", prompt, "the lake", "the forest")
    assert is_correct(task, "the lake")
    assert is_correct(task, "  the lake \n")
    assert is_correct(task, "\n the lake\nthe forest")
    assert not is_correct(task, "the forest\nthe lake")
    assert not is_correct(task, "the lake.")
    assert not is_correct(task, "")


def test_accuracy_per_family_and_overall():
    tasks = make_tasks(10, "train", seed=2)  # two of each family, in turn
    completions = [t.answer if t.family in ("copy", "count") or i < 5 else t.wrong for i, t in enumerate(tasks)]
    result = accuracy(tasks, completions)
    assert result == {"copy": 1.0, "reverse": 0.5, "count": 1.0, "recall": 0.5, "pattern": 0.5, "all": 0.7}
    with pytest.raises(ValueError, match="completions"):
        accuracy(tasks, completions[:-1])


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "val"}, "split must be one of"),
    ({"families": ("copy", "shuffle")}, "families must be"),
    ({"n": -1}, "n must be"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tasks(**{"n": 5, "split": "train", **kwargs})
