from __future__ import annotations

import math

import numpy as np
import pytest

from loopwright.evaluation.stats import bootstrap_mean, paired_bootstrap, win_rate


def test_bootstrap_ci_covers_true_mean_at_nominal_rate() -> None:
    """200 simulated Bernoulli(0.7) datasets of 100 samples: ~95% of CIs contain 0.7."""
    rng = np.random.default_rng(12345)
    p, n, datasets = 0.7, 100, 200
    hits = 0
    widths = []
    for i in range(datasets):
        data = (rng.random(n) < p).astype(float)
        ci = bootstrap_mean(data.tolist(), resamples=1000, seed=i)
        hits += ci.low <= p <= ci.high
        widths.append(ci.high - ci.low)
    coverage = hits / datasets
    # binomial SE at 0.95 over 200 datasets is ~0.015: accept 0.95 -/+ ~3 SE (one-sided
    # upper cap guards against intervals that are uselessly wide)
    assert 0.90 <= coverage <= 0.99, coverage
    # the interval width matches the normal approximation 2*1.96*sqrt(p(1-p)/n) ~ 0.18
    assert np.mean(widths) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.1)


def test_paired_bootstrap_coverage_on_correlated_pairs() -> None:
    """Candidate = baseline flipped on a few samples: the paired CI covers the true delta."""
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(200):
        base = (rng.random(200) < 0.6).astype(float)
        improve = (rng.random(200) < 0.1).astype(float)
        worsen = (rng.random(200) < 0.05).astype(float)
        cand = np.clip(base + improve * (1 - base) - worsen * base, 0, 1)
        expected = float(np.mean(cand - base))
        ci = paired_bootstrap(cand.tolist(), base.tolist(), resamples=1000, seed=i)
        assert ci.value == pytest.approx(expected)
        # population delta: P(improve & base=0) - P(worsen & base=1) = .1*.4 - .05*.6 = .01
        hits += ci.low <= 0.1 * 0.4 - 0.05 * 0.6 <= ci.high
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_is_seeded_and_handles_edges() -> None:
    data = [0, 1, 1, 0, 1, 1, 1, 0]
    assert bootstrap_mean(data, seed=3) == bootstrap_mean(data, seed=3)
    assert bootstrap_mean(data, seed=3).value == pytest.approx(5 / 8)
    empty = bootstrap_mean([])
    assert empty.n == 0 and math.isnan(empty.value)
    const = bootstrap_mean([1.0, 1.0, 1.0])
    assert (const.value, const.low, const.high, const.n) == (1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([1.0, float("nan")])
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_win_rate_counts_ties_half() -> None:
    assert win_rate([1, 0, 1, 0.5], [0, 0, 1, 1]) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert math.isnan(win_rate([], []))
