"""Bootstrap confidence intervals for means and for paired differences.

Written with numpy rather than ``scipy.stats.bootstrap`` because the paired, seeded,
vectorised form we need (same resampled indices for candidate and baseline, degenerate
inputs handled explicitly) is a few lines here and would be a wrapper there anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided bootstrap interval.

    Attributes:
        value: the statistic on the observed data (a mean, or a mean difference).
        low: lower bound of the interval.
        high: upper bound of the interval.
        n: number of units the statistic averages over (0 means no data: all NaN).

    """

    value: float
    low: float
    high: float
    n: int


def _check(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a usable interval, got {resamples}")


def _chunked_means(data: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of ``data``, in memory-bounded chunks."""
    n = data.shape[0]
    out = np.empty(resamples, dtype=np.float64)
    # Bound the index matrix to ~4M entries so large suites do not allocate gigabytes.
    chunk = max(1, min(resamples, 4_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = data[idx].mean(axis=1)
    return out


def bootstrap_mean(
    values: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval for the mean of per-unit values.

    Args:
        values: one value per independent unit (per sample); NaNs are not allowed.
        confidence: two-sided coverage, e.g. 0.95.
        resamples: bootstrap resamples.
        seed: RNG seed; the same inputs and seed give the same interval.

    Returns:
        The mean and its interval; with no values, NaNs and ``n=0``; with one value,
        a zero-width interval at that value.

    """
    _check(confidence, resamples)
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if np.isnan(data).any():
        raise ValueError("values contain NaN; drop not-applicable samples before bootstrapping")
    n = int(data.shape[0])
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(data.mean())
    if n == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean, n)
    means = _chunked_means(data, resamples, np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), n)


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Interval for mean(candidate - baseline) resampling the pairs together.

    Pairing removes the between-sample variance both models share, so the interval is
    much tighter than comparing two independent intervals.

    Args:
        candidate: per-sample values of the candidate.
        baseline: per-sample values of the baseline on the same samples, same order.
        confidence: two-sided coverage, e.g. 0.95.
        resamples: bootstrap resamples.
        seed: RNG seed.

    Raises:
        ValueError: the two sequences differ in length.

    """
    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    if cand.shape != base.shape:
        raise ValueError(
            f"paired values must align: candidate has {cand.shape[0]}, baseline has {base.shape[0]}"
        )
    return bootstrap_mean(
        (cand - base).tolist(), confidence=confidence, resamples=resamples, seed=seed
    )


def win_rate(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """Fraction of pairs where the candidate scores higher; ties count one half.

    Returns NaN for no pairs.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    if cand.shape != base.shape:
        raise ValueError("paired values must align")
    if cand.size == 0:
        return float("nan")
    return float(((cand > base).sum() + 0.5 * (cand == base).sum()) / cand.size)
