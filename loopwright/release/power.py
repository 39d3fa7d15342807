"""How much a paired comparison can tell: non-inferiority bounds, outcomes, samples needed.

The evaluation reports each paired delta with a two-sided 95% bootstrap CI. The gate asks a
one-sided question ("is the candidate worse than the champion by more than the margin?"),
so the bound it uses is derived from that CI's standard error at the policy's one-sided
confidence, and the critical value depends on whether more samples may still come
(an interim look of a staged evaluation) or not (the final look).

Group-sequential design: Haybittle-Peto. Interim looks use a strict critical value (3.0,
one-sided p ~ 0.0013) and the final look the nominal one, so looking early barely spends
any of the final test's error rate. The simple, well-known choice; an O'Brien-Fleming
spending function would need the information fractions fixed in advance.

Why by hand: scipy has the normal quantiles used here, but no library implements a
three-way non-inferiority outcome with a sample-size estimate on summary statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy.stats import norm

__all__ = [
    "REPORTED_CI_Z",
    "NonInferiority",
    "Outcome",
    "critical_z",
    "non_inferiority",
    "standard_error",
]

# The summary's CIs are two-sided 95% (loopwright.evaluation.stats): half-width = 1.96 SE.
REPORTED_CI_Z = float(norm.ppf(0.975))
# Ask for at most this many times the current sample count; beyond it "needs more" is moot.
_MAX_GROWTH = 100

Outcome = Literal["pass", "regression", "inconclusive"]


def critical_z(confidence: float, *, final_look: bool, interim_z: float) -> float:
    """One-sided critical value: the nominal one at the final look, ``interim_z`` before."""
    nominal = float(norm.ppf(confidence))
    return nominal if final_look else max(nominal, interim_z)


def standard_error(ci_low: float, ci_high: float) -> float:
    """Standard error implied by a two-sided 95% CI (normal approximation), >= 0."""
    return max(0.0, (ci_high - ci_low) / (2 * REPORTED_CI_Z))


@dataclass(frozen=True)
class NonInferiority:
    """The three-way answer for one paired comparison.

    Attributes:
        outcome: ``pass`` (the worse bound is within the margin), ``regression`` (even the
            better bound is beyond it), or ``inconclusive`` (the interval straddles it).
        lower / upper: one-sided bounds of the improvement (positive = candidate better),
            in metric units, at the critical value used.
        z: the critical value used.
        needed_n: for ``inconclusive``, the paired samples at which an interval of the
            same spread around the same estimate would resolve the margin (None when the
            estimate sits on the margin or the spread is unknown).
    """

    outcome: Outcome
    lower: float
    upper: float
    z: float
    needed_n: int | None = None


def non_inferiority(
    improvement: float, se: float, n: int, margin: float, z: float
) -> NonInferiority:
    """Judge ``improvement`` (positive = better) with standard error ``se`` against ``-margin``.

    Args:
        improvement: candidate minus champion, re-signed so that positive means better.
        se: its standard error (metric units).
        n: paired samples behind it.
        margin: tolerated worsening, >= 0 (0 for "not worse at all").
        z: one-sided critical value (:func:`critical_z`).

    Returns:
        The outcome, the bounds and, when inconclusive, the samples a decision needs.
    """
    lower = improvement - z * se
    upper = improvement + z * se
    if lower >= -margin:
        return NonInferiority("pass", lower, upper, z)
    if upper < -margin:
        return NonInferiority("regression", lower, upper, z)
    distance = abs(improvement + margin)
    needed: int | None = None
    if se > 0 and n > 0 and distance > 0:
        sd = se * math.sqrt(n)
        needed = math.ceil((z * sd / distance) ** 2)
        if needed > _MAX_GROWTH * n:
            needed = None
    return NonInferiority("inconclusive", lower, upper, z, needed)
