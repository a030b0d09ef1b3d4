"""The embedded language: every text has one derivation, the floor is its exact entropy, and the code is
typed where the generator says."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.config.schema import ModelConfig, TrainerConfig
from llmlab.data.stats import bigram_loss, entropy_floor
from llmlab.data.synthetic import Language, enumerate_documents, sample_annotated_documents, sample_documents
from llmlab.data.tokenizers import CharTokenizer
from llmlab.model.transformer import Transformer
from llmlab.train.optim import build_optimizer

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


@pytest.fixture
def one_thread():
    """One CPU thread (reductions in one order: the same run on any machine), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_small_model_learns_to_type_the_code_it_was_given(one_thread):
    """2 layers, Muon, 400 steps on a one-sentence version of the language (about 30 s on one thread): the typed
    code's loss falls from above its unconditional cost (ln(10 x ... x 5) / 6 = 1.99 nats a digit) to a small part of
    it, while the code where it is given, which nothing predicts, stays near that cost."""
    language = Language(places=("park",), classes=((("ate",), ("pear",), ("ripe",)),), sentence_counts=(1,))
    train, _ = sample_annotated_documents(language, 2000, seed=0)
    val, _ = sample_annotated_documents(language, 64, seed=1)
    tokenizer = CharTokenizer.train("".join(text for text, _ in train))
    stream = torch.tensor([i for text, _ in train for i in [tokenizer.eos_id, *tokenizer.encode(text)]])
    context = 104  # every document fits whole
    rows, typed, given = [], torch.zeros(len(val), context, dtype=torch.bool), torch.zeros(len(val), context,
                                                                                          dtype=torch.bool)
    for n, (text, copies) in enumerate(val):
        ids = [tokenizer.eos_id, *tokenizer.encode(text)]
        rows.append(ids + [tokenizer.eos_id] * (context + 1 - len(ids)))
        (code,) = [c for c in copies if c.kind == "code"]
        typed[n, code.start:code.end] = True  # input position i predicts character i of the text
        given[n, code.source_start:code.source_end] = True
    rows = torch.tensor(rows)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=128, n_heads=4, context_length=context,
                                    vocab_size=tokenizer.vocab_size))
    optimizer = build_optimizer(model, TrainerConfig(), torch.device("cpu"))
    batches = torch.Generator().manual_seed(0)

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            nats = F.cross_entropy(model(rows[:, :-1]).transpose(1, 2), rows[:, 1:], reduction="none")
        return nats[typed].mean().item(), nats[given].mean().item()

    unconditional = math.log(10 * 9 * 8 * 7 * 6 * 5) / 6
    for step in range(1, 401):
        starts = torch.randint(0, len(stream) - context - 1, (16,), generator=batches)
        block = torch.stack([stream[s:s + context + 1] for s in starts])
        loss = F.cross_entropy(model(block[:, :-1]).flatten(0, 1), block[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step == 100:
            assert losses()[0] > unconditional  # the language learnt, the code not yet copied
    typed_loss, given_loss = losses()
    assert typed_loss < 0.25 * unconditional and given_loss > 0.9 * unconditional
