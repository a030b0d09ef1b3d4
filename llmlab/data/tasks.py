"""Short instruction tasks with one verifiable answer, drawn from the embedded language (synthetic.py).

They let a tiny model pretrained on that language be post-trained (SFT, then DPO) and scored by exact
match, with nothing to download. Five families, each short and regular:

- copy:    "Repeat the sentence. Bako ate the ripe pear."              -> "Bako ate the ripe pear."
- reverse: "Reverse the words. the ripe pear"                          -> "pear ripe the"
- count:   "Say how many words. Bako ate the ripe"                     -> "four"
- recall:  "Bako and Tilu went to the lake. Tilu gave the map to Bako. Name who gave the map." -> "Tilu"
           (or "Name who got the map." -> "Bako", "Name who ate the ripe pear.", "Name the place." -> "the lake")
- pattern: "Keep going. pear lake pear lake pear"                      -> "lake"

and two graded families over the digits of the language's typed code, opt-in (`data.families=[sum]`), whose
difficulty is the number of digits (`data.levels`), for post-training that needs a task the model is sometimes
right on (pass@k, GRPO, on-policy DPO):

- sum:     "Sum the digits. #352"                                      -> "10"
- sort:    "Sort the digits. #7294"                                    -> "2479"

Sentences and phrases come from documents the language itself generates, so a pretrained model has
seen every word and construction. Each task also carries a plausible wrong reply of the same form (the
copy with one word swapped for one of its kind, another order of the words, a count off by one, the
other character or another place, another word of the cycle) for preference pairs.

Every character must be one the language produces, or a character tokenizer trained on its corpus turns
it into <unk>: letters of its words, the capitals that start names (B D G K L M N P R S T V), space,
period, and the code's '#' and digits. Hence no '?' or ':', instructions that start with one of those
capitals, questions phrased as "Name ...", and counts in words from one to five ("six" has an x, which the
language never writes); the graded families write digits after a '#', as the language's code does.

Train and test never share a prompt, by construction: a prompt's split is a pure function of its text
(a SHA-256 bucket, ``split_of``) and each split draws until it has prompts of its own. Unlike disjoint
name or word sets this holds for every family (counting and patterns have no names), every seed and
every language, and both splits still use the whole vocabulary: test measures new combinations, not
new words a pretrained model would never have seen in SFT.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

from llmlab.config.schema import TASK_FAMILIES
from llmlab.data.synthetic import Language

SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # share of all possible prompts that belong to the test split
NUMBER_WORDS = ("one", "two", "three", "four", "five")
MAX_DRAWS = 10_000  # consecutive draws that may land in the other split before we give up


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str  # the user's instruction, with its context
    answer: str  # the one correct reply
    wrong: str  # a plausible wrong reply of the same form, never equal to answer
    level: int = 0  # a graded family's difficulty (digits in the prompt); 0 for the language's own families


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, whoever generates it: a stable hash, not Python's salted hash()."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < TEST_FRACTION else "train"


# --- what the families draw from ---------------------------------------------------------------------


@cache
def _alternatives(language: Language) -> dict[str, tuple[str, ...]]:
    """Each swappable word -> the other words of its kind (same place list, same verb class)."""
    groups = [language.places]
    for verbs, nouns, adjectives in language.classes:
        groups += [verbs, nouns, adjectives]
    return {w: tuple(o for o in group if o != w) for group in groups for w in group}


def _sentences(language: Language, rng: random.Random) -> list[str]:
    """The sentences of one document of the language, each with its period."""
    return [s + "." for s in language.document(rng.randrange)[:-1].split(". ")]


def _phrase(language: Language, rng: random.Random, length: int) -> list[str]:
    """`length` consecutive words of a sentence of the language, without its period."""
    words = rng.choice(_sentences(language, rng))[:-1].split()
    start = rng.randrange(len(words) - length + 1)
    return words[start:start + length]


# --- the families: each draws one task --------------------------------------------------------------


def _copy(language: Language, rng: random.Random) -> Task:
    sentence = rng.choice(_sentences(language, rng))
    words = sentence[:-1].split()
    # Names (the only capitalised words) and lexicon words with a sibling can be swapped.
    slots = [i for i, w in enumerate(words) if w[0].isupper() or _alternatives(language).get(w)]
    i = rng.choice(slots)
    if words[i][0].isupper():
        swapped = language.name(rng.randrange, exclude=words[i])
    else:
        swapped = rng.choice(_alternatives(language)[words[i]])
    wrong = " ".join(words[:i] + [swapped] + words[i + 1:]) + "."
    return Task("copy", f"Repeat the sentence. {sentence}", sentence, wrong)


def _reverse(language: Language, rng: random.Random) -> Task:
    words = _phrase(language, rng, 3)
    answer = " ".join(reversed(words))
    # Another order of the same words: the source left as is, a rotation, one pair swapped.
    orders = sorted({" ".join(p) for p in itertools.permutations(words)} - {answer})
    return Task("reverse", f"Reverse the words. {' '.join(words)}", answer, rng.choice(orders))


def _count(language: Language, rng: random.Random) -> Task:
    k = rng.randrange(len(NUMBER_WORDS))  # k + 1 words
    words = _phrase(language, rng, k + 1)
    off_by_one = [j for j in (k - 1, k + 1) if 0 <= j < len(NUMBER_WORDS)]
    wrong = NUMBER_WORDS[rng.choice(off_by_one)]
    return Task("count", f"Say how many words. {' '.join(words)}", NUMBER_WORDS[k], wrong)


def _recall(language: Language, rng: random.Random) -> Task:
    # A document with one event after the introduction, so every question has exactly one answer.
    intro, event = _sentences(replace(language, sentence_counts=(1,)), rng)
    first, _, second, *_, place = intro[:-1].split()
    words = event[:-1].split()
    subject = words[0]
    other = second if subject == first else first
    options: list[tuple[str, str, str]] = []  # (question, answer, wrong)
    if len(language.places) > 1:
        other_place = rng.choice([p for p in language.places if p != place])
        options.append(("Name the place.", f"the {place}", f"the {other_place}"))
    if len(words) == 6:  # "X gave the <noun> to Y."
        noun, receiver = words[3], words[5]
        options += [(f"Name who gave the {noun}.", subject, receiver), (f"Name who got the {noun}.", receiver, subject)]
    else:  # "X <verb> the <adj> <noun>."
        options.append((f"Name who {' '.join(words[1:])}.", subject, other))
    question, answer, wrong = rng.choice(options)
    return Task("recall", f"{intro} {event} {question}", answer, wrong)


def _pattern(language: Language, rng: random.Random) -> Task:
    pool = list(dict.fromkeys([n for _, nouns, _ in language.classes for n in nouns] + list(language.places)))
    period = rng.choice((2, 3))
    cycle = rng.sample(pool, period)
    shown = 2 * period + rng.randrange(period)  # at least two full cycles, so the period is unambiguous
    answer = cycle[shown % period]
    wrong = rng.choice([w for w in cycle if w != answer])
    return Task("pattern", f"Keep going. {' '.join(cycle[i % period] for i in range(shown))}", answer, wrong)


def _digits(language: Language, rng: random.Random, level: int) -> list[str]:
    """`level` distinct digits in a random order, as the language's code draws them."""
    return rng.sample(language.digits, level)


def _sum(language: Language, rng: random.Random, level: int) -> Task:
    digits = _digits(language, rng, level)
    total = sum(map(int, digits))
    wrong = str(total + rng.choice([d for d in (-1, 1) if total + d >= 0]))
    return Task("sum", f"Sum the digits. #{''.join(digits)}", str(total), wrong, level)


def _sort(language: Language, rng: random.Random, level: int) -> Task:
    digits = _digits(language, rng, level)
    answer = sorted(digits)
    i = rng.randrange(level - 1)  # two neighbours swapped: right digits, wrong order
    wrong = answer[:i] + [answer[i + 1], answer[i]] + answer[i + 2:]
    return Task("sort", f"Sort the digits. #{''.join(digits)}", "".join(answer), "".join(wrong), level)


_GENERATORS: dict[str, Callable[[Language, random.Random], Task]] = {
    "copy": _copy, "reverse": _reverse, "count": _count, "recall": _recall, "pattern": _pattern,
}
_GRADED: dict[str, Callable[[Language, random.Random, int], Task]] = {"sum": _sum, "sort": _sort}
FAMILIES: tuple[str, ...] = tuple(_GENERATORS)  # the default mix
GRADED_FAMILIES: tuple[str, ...] = tuple(_GRADED)
LEVELS = (2, 3, 4, 5)  # digits per prompt of a graded family, unless data.levels says otherwise
assert FAMILIES + GRADED_FAMILIES == TASK_FAMILIES, "the config's task families (llmlab/config/schema.py)"


def make_tasks(
    n: int, split: str, seed: int = 0, language: Language | None = None, families: tuple[str, ...] = FAMILIES,
    levels: tuple[int, ...] = LEVELS,
) -> list[Task]:
    """n tasks of `split`, families in turn (so every prefix is balanced), deterministic in (n, split, seed);
    a graded family takes `levels` in turn too (each of its rounds the next level).

    Draws are sequential, so make_tasks(n) is the first n tasks of make_tasks(m) for any m >= n.
    Prompts may repeat within a split (small families have few distinct prompts); never across splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    unknown = [f for f in families if f not in TASK_FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty tuple drawn from {TASK_FAMILIES}, got {families!r}")
    if not levels or any(not 2 <= level <= 10 for level in levels):
        raise ValueError(f"levels must be a non-empty tuple of digit counts from 2 to 10, got {levels!r}")
    # The tasks draw on the language's sentences; its code is pretraining's test of copying, not a task.
    language = replace(language or Language(), code_digits=0)
    rng = random.Random(f"llmlab.tasks/{seed}/{split}")  # str seeds are hashed with SHA-512: stable
    tasks = []
    for j in range(n):
        family = families[j % len(families)]
        level = levels[j // len(families) % len(levels)]
        for _ in range(MAX_DRAWS):
            task = _GRADED[family](language, rng, level) if family in _GRADED else _GENERATORS[family](language, rng)
            if split_of(task.prompt) == split:
                tasks.append(task)
                break
        else:
            raise ValueError(f"no {split} prompt for family {family!r} in {MAX_DRAWS} draws: the language is too small")
    return tasks


def is_correct(task: Task, completion: str) -> bool:
    """Exact match of the completion's first line, surrounding whitespace stripped."""
    lines = completion.strip().splitlines()
    return bool(lines) and lines[0].strip() == task.answer


def group_of(task: Task) -> str:
    """The family, and for a graded family its level too ("sum/3"): what per-difficulty figures group by."""
    return f"{task.family}/{task.level}" if task.level else task.family


def accuracy(tasks: list[Task], completions: list[str]) -> dict[str, float]:
    """Exact-match accuracy per family present in `tasks`, and over all of them ("all")."""
    if len(tasks) != len(completions):
        raise ValueError(f"got {len(tasks)} tasks but {len(completions)} completions")
    if not tasks:
        raise ValueError("accuracy needs at least one task")
    hits: dict[str, list[bool]] = {}
    for task, completion in zip(tasks, completions):
        hits.setdefault(task.family, []).append(is_correct(task, completion))
    result = {family: sum(h) / len(h) for family, h in hits.items()}
    result["all"] = sum(map(sum, hits.values())) / len(tasks)
    return result
