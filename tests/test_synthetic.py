"""The embedded language: every text has one derivation, the floor is its exact entropy, and the code is
typed where the generator says."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from llmlab.data.stats import bigram_loss, entropy_floor
from llmlab.data.synthetic import Language, enumerate_documents, sample_annotated_documents, sample_documents

# Small enough to check by hand: names from consonant "t" and vowels "a", "o" (Tata, Tato, Tota, Toto),
# # one place, one verb class with one verb/noun/adjective, always one sentence after the introduction, and a
# code of one digit (0 or 1).
TINY = Language(consonants="t", vowels="ao", places=("park",), classes=((("ate",), ("pear",), ("ripe",)),),
                sentence_counts=(1,), digits="01", code_digits=1)


def test_tiny_language_by_hand():
    docs = dict(enumerate_documents(TINY))
    # 4 first names x 3 second names x 2 codes x (2 subjects x 2 sentence kinds) = 96 documents, all distinct
    assert len(docs) == 96
    assert math.isclose(sum(docs.values()), 1.0)
    one = "Tata and Toto went to the park. The code was #1. Toto ate the ripe pear. They typed #1."
    # P = 1/4 (first) * 1/3 (second, not the first) * 1/2 (code) * 1/2 (subject) * 1/2 (kind); all else is forced
    assert math.isclose(docs[one], 1 / 96)
    without_code = dict(enumerate_documents(replace(TINY, code_digits=0)))
    assert len(without_code) == 48 and "Tata and Toto went to the park. Toto ate the ripe pear." in without_code


def test_the_floor_is_the_entropy_a_brute_force_enumeration_finds():
    """The per-token entropy of every document the language can write, weighted by its probability, equals the
    entropy the choices add up to: the code's digits, the names, the sentences."""
    language = replace(TINY, consonants="tk", digits="0123", code_digits=3, sentence_counts=(1, 2))
    docs = list(enumerate_documents(language))
    assert len({t for t, _ in docs}) == len(docs) and math.isclose(sum(p for _, p in docs), 1.0)
    entropy = -sum(p * math.log(p) for _, p in docs)
    names, codes = (2 * 2) ** 2, 4 * 3 * 2  # codes: 3 distinct digits of 4
    by_choices = (math.log(names) + math.log(names - 1) + math.log(codes) + math.log(2)
                  + 1.5 * (math.log(2) + math.log(2)))  # 1.5 sentences on average, each a subject and a kind
    assert math.isclose(entropy, by_choices)
    tokens = sum(p * (len(t) + 1) for t, p in docs)  # a character tokenizer, plus eos
    texts, logprobs = sample_documents(language, 4000, seed=0)
    sampled = entropy_floor(sum(logprobs), sum(len(t) + 1 for t in texts))
    assert abs(sampled - entropy / tokens) < 0.01  # the sampled floor converges on the enumerated one


def test_sampled_logprob_is_the_enumerated_probability():
    docs = dict(enumerate_documents(TINY))
    texts, logprobs = sample_documents(TINY, 50, seed=3)
    for text, lp in zip(texts, logprobs):
        assert math.isclose(math.exp(lp), docs[text])


def test_floor_on_the_tiny_language_is_its_entropy_per_token():
    texts, logprobs = sample_documents(TINY, 200, seed=0)
    tokens = sum(len(t) + 1 for t in texts)  # a character tokenizer: one token per char, plus eos
    floor = entropy_floor(sum(logprobs), tokens)
    assert math.isclose(floor, 200 * math.log(96) / tokens)  # every document has probability 1/96


def test_every_text_of_a_richer_language_has_one_derivation():
    language = Language(consonants="tk", vowels="ao", places=("park", "lake"),
                        classes=((("ate",), ("pear", "plum"), ("ripe",)), (("read",), ("book",), ("old", "long"))),
                        sentence_counts=(1, 2), digits="012", code_digits=2)
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


def test_the_code_is_typed_where_the_generator_says():
    annotated, _ = sample_annotated_documents(Language(), 300, seed=5)
    for text, copies in annotated:
        (typed,) = [c for c in copies if c.kind == "code"]
        code = text[typed.source_start:typed.source_end]
        assert typed.determined and text[typed.start:typed.end] == code
        assert len(code) == len(set(code)) == 6 and code.isdigit()
        intro_end = text.index(".") + 1
        assert text[intro_end:typed.source_end + 1] == f" The code was #{code}."  # right after the introduction
        assert text[typed.start - len("They typed #"):typed.end + 1] == f"They typed #{code}."
        sentences = text.split(". ")
        assert sentences[3].startswith("They typed") and text.count("#") == 2  # after the first sentence, once
        assert sum(c.isdigit() for c in text) == 12  # digits nowhere else
        assert typed.start - typed.source_end > 30  # a sentence stands between them
    # each digit of a code is uniform over those not used yet: the first is near 1/10 each
    firsts = [text[c.source_start] for text, copies in annotated for c in copies if c.kind == "code"]
    assert set(firsts) == set("0123456789") and max(map(firsts.count, set(firsts))) < 300 / 10 * 2
