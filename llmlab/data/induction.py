"""Repeated spans: Zipfian random tokens in which a span recurs later in the same document (`data=induction`).

Each document is `length` tokens drawn independently from a Zipfian unigram distribution over `vocab` symbols,
except that the `span` tokens starting at position t are a copy of the `span` tokens starting at s (s + span <=
t): only attention to the first occurrence can predict the copy, which is what an induction head does. The
distance t - s is drawn uniformly from every distance that fits, then s uniformly among the starts that fit it
(uniform distances leave a head that looks a fixed distance back little to gain: the copy must be found by its
content), and the generator returns (s, t) with the document.

With `skip` > 0 an unrepeated token is, with that chance, the fixed successor of the token two places before it.
Independent tokens give a previous-token head no use of its own (it pays only once an induction head reads it),
so the two heads must appear together from nothing; in natural text a previous-token head pays by itself, and
this structure gives it the same use.

The floor is exact. The best possible predictor knows the generator but not (s, t): at each position it mixes
the predictions of every (s, t) still consistent with the tokens so far, weighted by how well each explains them.
`position_logprobs` computes that mixture for a document (the log-probability of each token given the ones
before it, the document's start known), so the entropy floor of the whole text and of the repeated part alone
are both measured against the true optimum, not against the generator's hidden choices.

Symbols are single characters (digits, then upper- and lower-case ASCII letters, ranked by frequency in that
order), so documents are strings that the char tokenizer maps one to one onto ids and samples stay readable.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from llmlab.config.errors import ConfigError
from llmlab.data.tokenizers import Tokenizer

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # one character per symbol, by rank


@dataclass(frozen=True)
class RepeatedSpans:
    """The generator: vocab symbols with p(rank k) proportional to (k + 1)^-zipf, documents of `length` tokens
    with one span of `span` tokens repeated."""

    vocab: int = 32
    zipf: float = 1.0
    length: int = 48
    span: int = 16
    skip: float = 0.0  # the chance that an unrepeated token is the fixed successor of the token two places back

    @cached_property
    def probs(self) -> np.ndarray:
        weights = np.arange(1, self.vocab + 1, dtype=np.float64) ** -self.zipf
        return weights / weights.sum()

    @cached_property
    def successor(self) -> np.ndarray:
        """(vocab,) each symbol's fixed successor: a permutation drawn once (seed 0), the same for every seed."""
        return np.random.default_rng(0).permutation(self.vocab)

    @cached_property
    def transitions(self) -> np.ndarray:
        """(vocab, vocab) p(token | the token two places back) of an unrepeated token from the third on: the
        unigram, mixed with probability `skip` with that token's successor."""
        table = np.tile((1 - self.skip) * self.probs, (self.vocab, 1))
        table[np.arange(self.vocab), self.successor] += self.skip
        return table

    @cached_property
    def placements(self) -> np.ndarray:
        """(P, 2) every (s, t) with s + span <= t and t + span <= length: where the span and its copy may sit."""
        pairs = [(s, t) for s in range(self.length - 2 * self.span + 1)
                 for t in range(s + self.span, self.length - self.span + 1)]
        return np.asarray(pairs, dtype=np.int64)

    @cached_property
    def placement_probs(self) -> np.ndarray:
        """(P,) the chance of each placement: the distance uniform, then the start uniform given it."""
        distance = self.placements[:, 1] - self.placements[:, 0]
        _, index, counts = np.unique(distance, return_inverse=True, return_counts=True)
        return 1.0 / (len(counts) * counts[index])

    @property
    def unigram_entropy(self) -> float:
        """Nats per token of the unigram distribution (without the skip structure: what a model that ignores the
        context pays at best on an unrepeated token)."""
        return float(-(self.probs * np.log(self.probs)).sum())

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """n documents (n, length) of symbol indices and their placements (n, 2) as (s, t)."""
        rng = np.random.default_rng(seed)
        tokens = rng.choice(self.vocab, size=(n, self.length), p=self.probs)
        placed = self.placements[rng.choice(len(self.placements), size=n, p=self.placement_probs)]
        if self.skip:  # left to right: a token after the copy depends on the copy's tokens
            follow = rng.random((n, self.length)) < self.skip
            for i in range(self.length):
                if i >= 2:
                    tokens[:, i] = np.where(follow[:, i], self.successor[tokens[:, i - 2]], tokens[:, i])
                copying = (i >= placed[:, 1]) & (i < placed[:, 1] + self.span)
                tokens[copying, i] = tokens[copying, placed[copying, 0] + i - placed[copying, 1]]
            return tokens, placed
        offsets = np.arange(self.span)
        rows = np.arange(n)[:, None]
        tokens[rows, placed[:, 1:2] + offsets] = tokens[rows, placed[:, 0:1] + offsets]
        return tokens, placed

    def position_logprobs(self, tokens: np.ndarray) -> np.ndarray:
        """(length,) natural-log probability of each token of one document given the tokens before it, under the
        Bayes-optimal predictor: the mixture over every placement, weighted by its likelihood so far."""
        tokens = np.asarray(tokens, dtype=np.int64)
        s, t = self.placements[:, 0:1], self.placements[:, 1:2]  # (P, 1)
        positions = np.arange(self.length)[None, :]  # (1, length)
        copied = (positions >= t) & (positions < t + self.span)  # (P, length): this placement's copy
        source = np.where(copied, positions - t + s, 0)
        matches = tokens[source] == tokens[None, :]
        free = np.log(np.concatenate([self.probs[tokens[:2]], self.transitions[tokens[:-2], tokens[2:]]]))[None, :]
        with np.errstate(divide="ignore"):
            terms = np.where(copied, np.log(matches.astype(np.float64)), free)  # a copy: 1 if it matches, else 0
        prefix = np.cumsum(terms, axis=1)  # (P, length) log-likelihood of the first i + 1 tokens
        prior = np.log(self.placement_probs)[:, None]
        joint = np.logaddexp.reduce(prefix + prior, axis=0)  # (length,) log P(tokens[:i + 1])
        return np.diff(joint, prepend=0.0)

    def text(self, tokens: np.ndarray) -> str:
        return "".join(ALPHABET[i] for i in tokens)


@dataclass
class SpanDocuments:
    """Documents as text with where each one's span sits and, when scored, each token's optimal log-probability."""

    texts: list[str]
    placements: np.ndarray  # (n, 2): (s, t), the first occurrence at [s, s + span), the copy at [t, t + span)
    span: int
    logprobs: np.ndarray | None = None  # (n, length) from RepeatedSpans.position_logprobs

    def floors(self) -> dict[str, float]:
        """The optimum's loss (nats/token): on the repeated tokens, on their first occurrences, and per document
        token (the end tokens, which a model that saw the document start predicts for free, left out)."""
        if self.logprobs is None:
            raise ValueError("these documents were not scored")
        repeat, first = self.part_mask(1), self.part_mask(0)
        return {"repeat_floor": float(-self.logprobs[repeat].mean()),
                "first_floor": float(-self.logprobs[first].mean()),
                "document_floor": float(-self.logprobs.mean())}

    def part_mask(self, which: int) -> np.ndarray:
        """(n, length) True on each document's first occurrence (which=0) or repeat (which=1)."""
        length = len(self.texts[0])
        starts = self.placements[:, which:which + 1]
        positions = np.arange(length)[None, :]
        return (positions >= starts) & (positions < starts + self.span)


def span_documents(generator: RepeatedSpans, n: int, seed: int, score: bool = False) -> SpanDocuments:
    """n documents from seed; score=True also computes every token's optimal log-probability."""
    tokens, placed = generator.sample(n, seed)
    logprobs = np.stack([generator.position_logprobs(row) for row in tokens]) if score else None
    return SpanDocuments([generator.text(row) for row in tokens], placed, generator.span, logprobs)


@dataclass
class SpanProbe:
    """Validation documents as rows the model reads, each after an end token as in training: ids (rows, length + 1);
    first and repeat (rows, length) mark the targets on the first occurrence and on the repeat (target j is the
    document's token j, predicted at position j)."""

    ids: torch.Tensor
    first: torch.Tensor
    repeat: torch.Tensor


def span_probe(docs: SpanDocuments, tokenizer: Tokenizer, rows: int) -> SpanProbe:
    """The first `rows` documents encoded; a tokenizer that does not give one token per symbol is refused."""
    texts = docs.texts[:rows]
    encoded = [tokenizer.encode(text) for text in texts]
    if any(len(ids) != len(text) for ids, text in zip(encoded, texts, strict=True)):
        raise ConfigError(f"data=induction needs one token per symbol, and tokenizer={tokenizer.kind} merges "
                          "them: use tokenizer=char or tokenizer=byte")
    ids = torch.tensor([[tokenizer.eos_id, *row] for row in encoded])
    n = len(texts)
    return SpanProbe(ids, torch.from_numpy(docs.part_mask(0)[:n]), torch.from_numpy(docs.part_mask(1)[:n]))
