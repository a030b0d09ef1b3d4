"""How good sampled text is, beyond the loss: diversity, repetition, length, and on the embedded language whether
the grammar accepts it and the names are copied.

Words are whitespace-separated; n-grams are counted within a sample, never across two.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from llmlab.data.grammar import GrammarChecker
from llmlab.sampling import Completion


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of all samples (1 = nothing repeats); None when there are none."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float | None:
    """The share of each sample's n-grams that already occurred earlier in that same sample (a model stuck in a
    loop scores near 1); None when no sample is n words long."""
    repeated = total = 0
    for text in texts:
        seen: set[tuple[str, ...]] = set()
        for gram in ngrams(text.split(), n):
            repeated += gram in seen
            seen.add(gram)
            total += 1
    return repeated / total if total else None


def quality(samples: Sequence[Completion], grammar: GrammarChecker | None = None) -> dict[str, float | None]:
    """One job's samples in figures: distinct_1/2, repeat_4gram, mean_tokens (to the end token), ended (share that
    reached it); with a grammar also grammatical and names_copied (shares of sentences) and valid_documents."""
    texts = [s.text for s in samples]
    row: dict[str, float | None] = {
        "samples": len(samples),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "repeat_4gram": repeated_ngram_rate(texts, 4),
        "mean_tokens": statistics.fmean(s.tokens for s in samples) if samples else None,
        "ended": statistics.fmean(s.ended for s in samples) if samples else None,
    }
    if grammar is not None:
        checks = [grammar.check(t) for t in texts]
        sentences = sum(c.sentences for c in checks)
        row["grammatical"] = sum(c.accepted for c in checks) / sentences if sentences else None
        row["names_copied"] = sum(c.names_copied for c in checks) / sentences if sentences else None
        row["valid_documents"] = statistics.fmean(c.valid and s.ended for c, s in zip(checks, samples, strict=True)) \
            if checks else None
    return row
