"""The embedded artificial language: small, seeded, structured, with an exactly known entropy.

A document introduces two characters and a code, then tells one to three short sentences about them;
after the first sentence they type the code:

    Bako and Tilu went to the lake. The code was #470852. Tilu ate the ripe pear. They typed #470852.
    Bako gave the map to Tilu.

Structure a model can learn, by what it takes to learn it:
- spelling, spacing and punctuation are deterministic (n-gram statistics suffice);
- a verb selects its noun class and the class its adjectives (a dependency a few words back);
- the code is a random string of distinct digits (6 by default: ln(10 x 9 x ... x 5) = 11.9 nats) and
  typing it repeats it verbatim: those digits cost that much to any model that does not copy from earlier
  in the context, and nothing to one that does. Digits and '#' appear nowhere else, and no digit twice in
  a code, so the token after each one's earlier occurrence is the next one: exactly what an induction head
  predicts, and the most a model can gain from attention to earlier context here;
- names are random syllable pairs met at the start of the document and later repeated, and in
  "X gave the N to Y" Y is always the *other* character: only attention to the introduction can
  predict them.

Every document is a sequence of uniform choices and its text determines those choices (names are
capitalised and never equal; word classes are disjoint; the code is the digits after the first '#'),
so each text has exactly one derivation and the generator knows its exact log-probability.
Summed over validation documents and divided by the run's token count, that is the entropy floor: no
model beats it on average.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# A chooser picks an index in range(n); the sampler draws it, the enumerator branches on it.
Chooser = Callable[[int], int]


@dataclass(frozen=True)
class Language:
    """The lexicon and grammar. The defaults are the embedded language; tests build tiny ones."""

    consonants: str = "bdgklmnprstv"
    vowels: str = "aeiou"
    places: tuple[str, ...] = ("lake", "market", "forest", "school", "harbor", "garden")
    # verb class -> (verbs, nouns, adjectives): a verb takes nouns and adjectives of its own class
    classes: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
        (("ate", "cooked"), ("pear", "bread", "soup", "plum"), ("ripe", "warm", "sweet")),
        (("read", "wrote"), ("book", "letter", "poem", "note"), ("long", "short", "old")),
        (("found", "lost"), ("key", "coin", "ring", "map"), ("small", "shiny", "golden")),
        (("fed", "washed"), ("dog", "cat", "goat", "horse"), ("big", "sleepy", "young")),
    )
    sentence_counts: tuple[int, ...] = (1, 2, 3)
    digits: str = "0123456789"
    code_digits: int = 6  # distinct digits of the code given after the introduction and typed later (0: no code)

    def name(self, choose: Chooser, exclude: str | None = None) -> str:
        """A capitalised consonant-vowel-consonant-vowel name, uniform over all names but `exclude`."""
        c, v = len(self.consonants), len(self.vowels)
        total = (c * v) ** 2
        index = choose(total - (exclude is not None))
        if exclude is not None and index >= self.name_index(exclude):
            index += 1  # skip the excluded name, keeping the rest uniform
        s1, s2 = divmod(index, c * v)
        letters = "".join(self.consonants[s // v] + self.vowels[s % v] for s in (s1, s2))
        return letters.capitalize()

    def name_index(self, name: str) -> int:
        c, v = len(self.consonants), len(self.vowels)
        low = name.lower()
        syllables = [self.consonants.index(low[i]) * v + self.vowels.index(low[i + 1]) for i in (0, 2)]
        return syllables[0] * c * v + syllables[1]

    def code(self, choose: Chooser) -> str:
        """code_digits distinct digits, each uniform over the digits not used yet."""
        digits = list(self.digits)
        return "".join(digits.pop(choose(len(digits))) for _ in range(self.code_digits))

    def document(self, choose: Chooser) -> str:
        return self.annotated_document(choose)[0]

    def annotated_document(self, choose: Chooser) -> tuple[str, list[Copy]]:
        """A document and every span it repeats from earlier in it (the same choices as `document`)."""
        first = self.name(choose)
        second = self.name(choose, exclude=first)
        cast = (first, second)
        introduced = ((0, len(first)), (len(first) + 5, len(first) + 5 + len(second)))  # "<first> and <second>"
        place = self.places[choose(len(self.places))]
        text = f"{first} and {second} went to the {place}."
        copies: list[Copy] = []
        if self.code_digits:
            code = self.code(choose)
            text += f" The code was #{code}."
            given = len(text) - 1 - len(code)  # where the code's digits start
        for k in range(self.sentence_counts[choose(len(self.sentence_counts))]):
            subject = choose(2)
            start = len(text) + 1  # after the space that joins sentences
            mentions = [(subject, start, False)]  # (who, where, determined)
            if choose(2) == 0:  # "X <verb> the <adj> <noun>."
                verbs, nouns, adjectives = self.classes[choose(len(self.classes))]
                verb, adj, noun = (w[choose(len(w))] for w in (verbs, adjectives, nouns))
                sentence = f"{cast[subject]} {verb} the {adj} {noun}."
            else:  # "X gave the <noun> to Y.": Y is the other character, fully determined
                nouns = [n for _, class_nouns, _ in self.classes for n in class_nouns]
                noun = nouns[choose(len(nouns))]
                sentence = f"{cast[subject]} gave the {noun} to {cast[1 - subject]}."
                mentions.append((1 - subject, start + len(sentence) - 1 - len(cast[1 - subject]), True))
            copies += [Copy(at, at + len(cast[who]), *introduced[who], det) for who, at, det in mentions]
            text += " " + sentence
            if k == 0 and self.code_digits:  # the code again, digit for digit
                text += f" They typed #{code}."
                typed = len(text) - 1 - len(code)
                copies.append(Copy(typed, typed + len(code), given, given + len(code), True, "code"))
        return text, copies


@dataclass(frozen=True)
class Copy:
    """A span a document repeats verbatim from earlier in it, as character offsets into the document: where it
    is repeated, where it first stood, whether the grammar determines it, and what it is. A "name" comes from
    the introduction: determined when it is the recipient in "X gave the N to Y" (always the other character),
    chosen when it is a sentence's subject (either character). A "code" is the code typed, always determined:
    every digit of it is in the context already."""

    start: int
    end: int
    source_start: int
    source_end: int
    determined: bool
    kind: str = "name"  # name | code


@dataclass
class _Sampler:
    rng: random.Random
    logprob: float = 0.0

    def __call__(self, n: int) -> int:
        self.logprob -= math.log(n)
        return self.rng.randrange(n)


def sample_documents(language: Language, n: int, seed: int) -> tuple[list[str], list[float]]:
    """n documents and the natural-log probability of each (the end of a document is the eos token)."""
    annotated, logprobs = sample_annotated_documents(language, n, seed)
    return [text for text, _ in annotated], logprobs


def sample_annotated_documents(language: Language, n: int, seed: int
                               ) -> tuple[list[tuple[str, list[Copy]]], list[float]]:
    """sample_documents' documents, each with the spans it repeats (names, the code typed)."""
    rng = random.Random(seed)
    docs, logprobs = [], []
    for _ in range(n):
        sampler = _Sampler(rng)
        docs.append(language.annotated_document(sampler))
        logprobs.append(sampler.logprob)
    return docs, logprobs


def enumerate_documents(language: Language) -> Iterator[tuple[str, float]]:
    """Every document the language can produce with its probability (for tiny languages in tests)."""

    @dataclass
    class Replay:
        prefix: list[int]
        sizes: list[int] = field(default_factory=list)

        def __call__(self, n: int) -> int:
            i = len(self.sizes)
            self.sizes.append(n)
            return self.prefix[i] if i < len(self.prefix) else 0

    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        replay = Replay(prefix)
        text = language.document(replay)
        # This run took choice 0 wherever the prefix ended; queue the siblings of each such choice.
        for depth in range(len(prefix), len(replay.sizes)):
            for alt in range(1, replay.sizes[depth]):
                stack.append(prefix + [0] * (depth - len(prefix)) + [alt])
        yield text, math.exp(-sum(math.log(n) for n in replay.sizes))
