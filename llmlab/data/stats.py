"""Baselines that say how good a loss is: unigram and bigram cross-entropy, and the entropy floor."""

from __future__ import annotations

import numpy as np


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on val of the add-one smoothed unigram model fitted on train."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size) + 1.0
    return float(-np.log(counts[val.astype(np.int64)] / counts.sum()).mean())


def bigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy on val[1:] of the add-one smoothed bigram model p(b | a) fitted on train.

    Pairs are counted sparsely (as a * V + b codes), so a large vocabulary costs no V x V table.
    """
    train, val = train.astype(np.int64), val.astype(np.int64)
    pair_codes, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    context_counts = np.bincount(train[:-1], minlength=vocab_size)
    queries = val[:-1] * vocab_size + val[1:]
    pos = np.searchsorted(pair_codes, queries).clip(max=len(pair_codes) - 1)
    found = pair_codes[pos] == queries
    counts = np.where(found, pair_counts[pos], 0)
    probs = (counts + 1.0) / (context_counts[val[:-1]] + vocab_size)
    return float(-np.log(probs).mean())


def entropy_floor(val_logprob: float | None, val_tokens: int) -> float | None:
    """The generator's own cross-entropy on the validation text, in nats per token of this tokenizer."""
    return None if val_logprob is None else -val_logprob / val_tokens
