"""The embedded language: every text has one derivation, and the floor is its exact entropy."""

from __future__ import annotations

import math

import numpy as np

from llmlab.data.stats import bigram_loss, entropy_floor
from llmlab.data.synthetic import Language, enumerate_documents, sample_documents

# Small enough to check by hand: names from consonant "t" and vowels "a", "o" (Tata, Tato, Tota, Toto),
# one place, one verb class with one verb/noun/adjective, always one sentence after the introduction.
TINY = Language(consonants="t", vowels="ao", places=("park",), classes=((("ate",), ("pear",), ("ripe",)),),
                sentence_counts=(1,))


def test_tiny_language_by_hand():
    docs = dict(enumerate_documents(TINY))
    # 4 first names x 3 second names x (2 subjects x 2 sentence kinds) = 48 documents, all distinct
    assert len(docs) == 48
    assert math.isclose(sum(docs.values()), 1.0)
    one = "Tata and Toto went to the park. Toto ate the ripe pear."
    # P = 1/4 (first) * 1/3 (second, not the first) * 1/2 (subject) * 1/2 (kind); all else is forced
    assert math.isclose(docs[one], 1 / 48)


def test_sampled_logprob_is_the_enumerated_probability():
    docs = dict(enumerate_documents(TINY))
    texts, logprobs = sample_documents(TINY, 50, seed=3)
    for text, lp in zip(texts, logprobs):
        assert math.isclose(math.exp(lp), docs[text])


def test_floor_on_the_tiny_language_is_its_entropy_per_token():
    texts, logprobs = sample_documents(TINY, 200, seed=0)
    tokens = sum(len(t) + 1 for t in texts)  # a character tokenizer: one token per char, plus eos
    floor = entropy_floor(sum(logprobs), tokens)
    assert math.isclose(floor, 200 * math.log(48) / tokens)  # every document has probability 1/48


def test_every_text_of_a_richer_language_has_one_derivation():
    language = Language(consonants="tk", vowels="ao", places=("park", "lake"),
                        classes=((("ate",), ("pear", "plum"), ("ripe",)), (("read",), ("book",), ("old", "long"))),
                        sentence_counts=(1, 2))
    docs = list(enumerate_documents(language))
    assert len({t for t, _ in docs}) == len(docs)
    assert math.isclose(sum(p for _, p in docs), 1.0)


def test_default_language_has_real_structure():
    """The floor is far below what a bigram model of the characters can do (<= 70% of it)."""
    train, _ = sample_documents(Language(), 3000, seed=1)
    val, logprobs = sample_documents(Language(), 300, seed=2)
    chars = {c: i + 1 for i, c in enumerate(sorted(set("".join(train + val))))}

    def encode(docs):
        return np.array([t for d in docs for t in [*(chars[c] for c in d), 0]])

    val_tokens = encode(val)
    floor = entropy_floor(sum(logprobs), len(val_tokens))
    bigram = bigram_loss(encode(train), val_tokens, len(chars) + 1)
    assert floor <= 0.7 * bigram
    assert 0.2 < floor < 0.5  # nats per character; the documents are mostly predictable, not trivial


def test_generation_is_seeded():
    assert sample_documents(Language(), 5, seed=7) == sample_documents(Language(), 5, seed=7)
    assert sample_documents(Language(), 5, seed=7)[0] != sample_documents(Language(), 5, seed=8)[0]
