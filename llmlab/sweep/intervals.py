"""Is a difference between two settings of a sweep real? Paired bootstrap intervals on the whole-split loss.

Every job of a sweep that shares data, tokenizer and context is scored on the same validation windows
(llmlab.train.split_eval), so two settings can be compared window by window: the windows that are hard for one
model are hard for the other, and pairing removes that shared variation. One bootstrap replicate resamples the
windows (the same draw for both settings) and, when seeds were swept, each setting's seeds too, so the interval
holds both sources of chance: which text was held out and which initialisation and data order a run drew.
Jobs scored on different windows (another tokenizer or context) are compared unpaired and marked so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmlab.train.split_eval import SplitLoss

REPLICATES = 2000
LEVEL = 0.95


@dataclass
class Difference:
    diff: float  # setting minus reference, whole-split loss (nats per token), mean over seeds
    low: float
    high: float
    paired: bool  # scored on the same windows as the reference

    @property
    def verdict(self) -> str:
        if self.low <= 0.0 <= self.high:
            return "indistinguishable"
        return "better" if self.diff < 0 else "worse"


def seed_losses(runs: Sequence[SplitLoss], weights: np.ndarray) -> np.ndarray:
    """(replicates, seeds): each run's loss under each replicate's window weights."""
    sums = np.stack([r.sums for r in runs])  # (seeds, windows)
    counts = runs[0].counts
    return (weights @ sums.T) / (weights @ counts)[:, None]


def resample_seeds(losses: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean over a resample (with replacement) of the seeds, per replicate."""
    reps, seeds = losses.shape
    picks = rng.integers(0, seeds, size=(reps, seeds))
    return np.take_along_axis(losses, picks, axis=1).mean(axis=1)


def window_weights(windows: int, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """How often each window is drawn in each replicate (multinomial: a resample of the windows)."""
    return rng.multinomial(windows, np.full(windows, 1.0 / windows), size=replicates).astype(np.float64)


def compare(setting: Sequence[SplitLoss], reference: Sequence[SplitLoss], seed: int = 0,
            replicates: int = REPLICATES, level: float = LEVEL) -> Difference:
    """The difference of the mean whole-split loss of `setting`'s runs (its seeds) and `reference`'s, with a
    percentile bootstrap interval at `level`; seeded, so a report rebuilt gives the same interval."""
    rng = np.random.default_rng(seed)
    point = np.mean([r.loss for r in setting]) - np.mean([r.loss for r in reference])
    fingerprints = {r.fingerprint for r in (*setting, *reference)}
    paired = len(fingerprints) == 1 and len({len(r.sums) for r in (*setting, *reference)}) == 1
    if paired:
        weights = window_weights(len(setting[0].sums), rng, replicates)
        ours, theirs = seed_losses(setting, weights), seed_losses(reference, weights)
    else:  # every run's windows resampled on their own
        ours, theirs = unpaired_losses(setting, rng, replicates), unpaired_losses(reference, rng, replicates)
    diffs = resample_seeds(ours, rng) - resample_seeds(theirs, rng)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Difference(float(point), float(low), float(high), paired)


def unpaired_losses(runs: Sequence[SplitLoss], rng: np.random.Generator, replicates: int) -> np.ndarray:
    """(replicates, seeds) with each run's windows resampled alone (runs scored on different windows)."""
    columns = [seed_losses([r], window_weights(len(r.sums), rng, replicates))[:, 0] for r in runs]
    return np.stack(columns, axis=1)


def describe(label: str, difference: Difference) -> str:
    """'model.n_layers=1: worse by 0.08 [0.07, 0.09]' or 'model.n_layers=4: indistinguishable (+0.003 [...])'."""
    interval = f"[{difference.low:+.4f}, {difference.high:+.4f}]"
    if difference.verdict == "indistinguishable":
        return f"{label}: indistinguishable ({difference.diff:+.4f} {interval})"
    lo, hi = sorted((abs(difference.low), abs(difference.high)))
    return f"{label}: {difference.verdict} by {abs(difference.diff):.4f} [{lo:.4f}, {hi:.4f}]"


# --- per-prompt scores (pass@1, pass@k): the same resampling, prompts in the place of windows ---------------------


def _as_split(scores: Sequence[float], fingerprint: str) -> SplitLoss:
    values = np.asarray(scores, dtype=np.float64)
    return SplitLoss(values, np.ones(len(values), dtype=np.int64), fingerprint)


def score_interval(scores: Sequence[float], seed: int = 0, replicates: int = REPLICATES,
                   level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): a percentile bootstrap interval over the prompts of a mean per-prompt score."""
    values = np.asarray(scores, dtype=np.float64)
    weights = window_weights(len(values), np.random.default_rng(seed), replicates)
    means = weights @ values / len(values)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def compare_scores(setting: Sequence[Sequence[float]], reference: Sequence[Sequence[float]], seed: int = 0,
                   replicates: int = REPLICATES, level: float = LEVEL) -> Difference:
    """Mean per-prompt score of `setting`'s runs (one list per seed) minus `reference`'s, all scored on the same
    prompts in the same order: the paired bootstrap of `compare`, resampling prompts (and seeds). Here a
    positive difference is the better one (a score, not a loss): `describe_score` says so."""
    lengths = {len(s) for s in (*setting, *reference)}
    if len(lengths) != 1:
        raise ValueError(f"paired scores need the same prompts: got lists of lengths {sorted(lengths)}")
    return compare([_as_split(s, "prompts") for s in setting], [_as_split(s, "prompts") for s in reference],
                   seed, replicates, level)


def describe_score(label: str, difference: Difference) -> str:
    """'DPO: higher by 0.06 [0.02, 0.10]' or 'DPO: indistinguishable (+0.010 [-0.020, +0.040])'."""
    interval = f"[{difference.low:+.3f}, {difference.high:+.3f}]"
    if difference.low <= 0.0 <= difference.high:
        return f"{label}: indistinguishable ({difference.diff:+.3f} {interval})"
    return f"{label}: {'higher' if difference.diff > 0 else 'lower'} by {abs(difference.diff):.3f} {interval}"
