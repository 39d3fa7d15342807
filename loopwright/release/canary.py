"""Canary analysis: a pure verdict over both arms' interaction logs in one window.

Both arms (route ``champion`` and ``canary``) are compared on the same wall-clock window on
live signals: output-rail block rate, fallback rate, negative-feedback rate, error rate
(HTTP status >= 500 or an error recorded), latency p95, and optionally a reward score. Each
signal is classified with a confidence interval on the canary-minus-champion difference:

* rates: Newcombe's hybrid score interval (method 10) built from the two Wilson intervals;
* latency p95: percentile bootstrap of the ratio canary p95 / champion p95 (seeded);
* reward: Welch's t interval on the difference of means.

A signal is ``harmful`` when the whole interval lies beyond the tolerated worsening,
``ok`` when it lies wholly within it, ``inconclusive`` otherwise — so a small sample gives
a wide interval and an inconclusive verdict, not a rollback. The verdict is ``rollback``
on any harmful signal, ``inconclusive`` (extend the window) until both arms have the
minimum requests and the window the minimum duration or while any signal is undecided,
else ``promote``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from loopwright.records import FeedbackEvent, Interaction
from loopwright.release.strict import StrictModel, VersionStr, load_yaml, parse_model

__all__ = [
    "ArmStats",
    "CanaryInputError",
    "CanaryPolicy",
    "CanaryVerdict",
    "SignalComparison",
    "analyse",
    "load_canary_policy",
    "newcombe_interval",
]

logger = logging.getLogger(__name__)

Arm = Literal["champion", "canary"]
Decision = Literal["promote", "rollback", "inconclusive"]
Status = Literal["ok", "harmful", "inconclusive", "not_measured"]
RATE_SIGNALS = ("output_block_rate", "fallback_rate", "negative_feedback_rate", "error_rate")


class CanaryInputError(ValueError):
    """An interaction or feedback event cannot be interpreted; the message names its id."""


class RateRule(StrictModel):
    """Tolerated worsening of a rate: canary minus champion, absolute, in [0, 1]."""

    max_increase: float = Field(ge=0.0, le=1.0)


class LatencyRule(StrictModel):
    """Tolerated p95 latency increase as a ratio: 0.2 allows canary p95 <= 1.2 x champion."""

    max_increase_ratio: float = Field(default=0.2, ge=0.0)


class RewardRule(StrictModel):
    """Tolerated drop of the mean reward score (reward units).

    Attributes:
        required: when True the verdict cannot be ``promote`` without reward scores.
        score_key: default source of a score: ``interaction.output_verdict.scores[key]``.

    """

    max_decrease: float = Field(default=0.1, ge=0.0)
    required: bool = False
    score_key: str = "reward"


class CanaryPolicy(StrictModel):
    """Canary analysis policy (``policies/canary.yaml``).

    Attributes:
        min_requests_per_arm: routed requests each arm needs before promote.
        min_duration_s: seconds the window must span before promote.
        confidence: two-sided confidence level of every interval.
        early_rollback: allow ``rollback`` before the minimums when a signal is harmful with
            this confidence (a broken canary should not keep serving while we wait).
        negative_labels: reviewer labels that count as negative feedback.
        corrections_are_negative: a user correction counts as negative feedback.
        bootstrap_resamples: resamples for the latency interval; ``seed`` fixes them.

    """

    version: VersionStr
    description: str = ""
    min_requests_per_arm: int = Field(default=200, ge=1)
    min_duration_s: float = Field(default=3600.0, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    early_rollback: bool = True
    output_block_rate: RateRule = RateRule(max_increase=0.03)
    fallback_rate: RateRule = RateRule(max_increase=0.03)
    negative_feedback_rate: RateRule = RateRule(max_increase=0.05)
    error_rate: RateRule = RateRule(max_increase=0.02)
    latency_p95: LatencyRule = LatencyRule()
    reward: RewardRule = RewardRule()
    negative_labels: list[str] = Field(
        default_factory=lambda: ["unsafe", "wrong_fact", "hallucination", "unhelpful", "bad"]
    )
    corrections_are_negative: bool = True
    bootstrap_resamples: int = Field(default=2000, ge=100)
    seed: int = 0
    digest: str | None = None


def default_canary_policy_path() -> Path:
    """Return the path of the packaged default canary policy file."""
    return Path(str(resources.files("loopwright.release") / "policies" / "canary.yaml"))


def load_canary_policy(path: str | Path | None = None) -> CanaryPolicy:
    """Load and strictly validate a canary policy YAML (default: the packaged one).

    Raises:
        ConfigError: invalid YAML or an unknown key (the message lists the valid ones).

    """
    path = Path(path) if path is not None else default_canary_policy_path()
    data, digest = load_yaml(path)
    return parse_model(CanaryPolicy, data, str(path)).model_copy(update={"digest": digest})


class ArmStats(StrictModel):
    """What one arm did in the window. Rates are fractions of ``requests``."""

    route: Arm
    requests: int
    versions: dict[str, int]
    output_blocks: int
    fallbacks: int
    errors: int
    negative_feedback: int
    feedback_events: int
    latency_p95_ms: float | None
    reward_mean: float | None
    reward_n: int

    def rate(self, signal: str) -> float | None:
        """Return the named rate signal, or None with no requests."""
        count = {
            "output_block_rate": self.output_blocks,
            "fallback_rate": self.fallbacks,
            "negative_feedback_rate": self.negative_feedback,
            "error_rate": self.errors,
        }[signal]
        return count / self.requests if self.requests else None


class SignalComparison(StrictModel):
    """Canary versus champion on one signal.

    ``difference`` and its interval are canary minus champion (rates, reward) or the ratio
    canary / champion (latency p95); ``threshold`` is the tolerated worsening on that scale.
    """

    signal: str
    champion: float | None
    canary: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float
    status: Status
    detail: str


class CanaryVerdict(StrictModel):
    """The canary analysis outcome with the evidence behind it."""

    decision: Decision
    reasons: list[str]
    champion: ArmStats
    canary: ArmStats
    comparisons: list[SignalComparison]
    window_start: datetime
    window_end: datetime
    duration_s: float
    counts: dict[str, int]
    policy_version: str
    policy_digest: str | None = None

    def to_tags(self) -> dict[str, str]:
        """MLflow model-version tags (values under 5000 characters)."""
        reasons = "\n".join(self.reasons)
        if len(reasons) > 4900:
            reasons = reasons[:4850] + "... [truncated]"
        return {
            "canary.verdict": self.decision,
            "canary.reasons": reasons,
            "canary.policy_version": self.policy_version,
            "canary.window": f"{self.window_start.isoformat()}/{self.window_end.isoformat()}",
            "canary.requests": f"champion={self.champion.requests},canary={self.canary.requests}",
        }


def newcombe_interval(
    k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe hybrid score interval for ``k1/n1 - k2/n2`` (his method 10).

    Written here because no installed library offers it (statsmodels is not a dependency);
    the per-arm Wilson intervals come from scipy.

    Raises:
        ValueError: an arm has no trials.

    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both arms need trials, got n1={n1}, n2={n2}")
    p1, p2 = k1 / n1, k2 / n2
    from scipy import stats  # deferred: scipy.stats costs ~1 s, config loading imports this

    ci1 = stats.binomtest(k1, n1).proportion_ci(confidence_level=confidence, method="wilson")
    ci2 = stats.binomtest(k2, n2).proportion_ci(confidence_level=confidence, method="wilson")
    d = p1 - p2
    low = d - math.sqrt((p1 - ci1.low) ** 2 + (ci2.high - p2) ** 2)
    high = d + math.sqrt((ci1.high - p1) ** 2 + (p2 - ci2.low) ** 2)
    return low, high


def _p95_ratio(canary: np.ndarray, champion: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.quantile(canary, 0.95, axis=axis)
    bottom = np.maximum(np.quantile(champion, 0.95, axis=axis), 1e-9)
    return np.asarray(top / bottom)


def _classify(low: float, high: float, threshold: float) -> Status:
    """Worsening is positive here: harmful when even ``low`` exceeds the threshold."""
    if low > threshold:
        return "harmful"
    if high <= threshold:
        return "ok"
    return "inconclusive"


def _compare_rate(
    signal: str, champ: ArmStats, can: ArmStats, rule: RateRule, conf: float
) -> SignalComparison:
    pc, pk = champ.rate(signal), can.rate(signal)
    if pc is None or pk is None:
        return SignalComparison(
            signal=signal,
            champion=pc,
            canary=pk,
            difference=None,
            ci_low=None,
            ci_high=None,
            threshold=rule.max_increase,
            status="not_measured",
            detail="an arm has no requests",
        )
    k_can = round(pk * can.requests)
    k_champ = round(pc * champ.requests)
    low, high = newcombe_interval(k_can, can.requests, k_champ, champ.requests, conf)
    status = _classify(low, high, rule.max_increase)
    detail = (
        f"{signal}: canary {pk:.4f} ({k_can}/{can.requests}) vs champion {pc:.4f} "
        f"({k_champ}/{champ.requests}); difference {pk - pc:+.4f} "
        f"[{low:+.4f}, {high:+.4f}], tolerated +{rule.max_increase:g}"
    )
    return SignalComparison(
        signal=signal,
        champion=pc,
        canary=pk,
        difference=pk - pc,
        ci_low=low,
        ci_high=high,
        threshold=rule.max_increase,
        status=status,
        detail=detail,
    )


def _compare_latency(
    champ: list[float], can: list[float], policy: CanaryPolicy
) -> SignalComparison:
    threshold = 1.0 + policy.latency_p95.max_increase_ratio
    if len(champ) < 2 or len(can) < 2:
        return SignalComparison(
            signal="latency_p95",
            champion=None,
            canary=None,
            difference=None,
            ci_low=None,
            ci_high=None,
            threshold=threshold,
            status="not_measured",
            detail="latency_p95: fewer than 2 requests in an arm",
        )
    a, b = np.asarray(can, dtype=float), np.asarray(champ, dtype=float)
    p_can, p_champ = float(np.quantile(a, 0.95)), float(np.quantile(b, 0.95))
    ratio = float(_p95_ratio(a, b))
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        low = high = ratio  # no spread: resampling cannot change the p95s
    else:
        from scipy import stats

        res = stats.bootstrap(
            (a, b),
            _p95_ratio,
            n_resamples=policy.bootstrap_resamples,
            confidence_level=policy.confidence,
            method="percentile",
            vectorized=True,
            batch=200,
            rng=np.random.default_rng(policy.seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    status = _classify(low, high, threshold)
    detail = (
        f"latency_p95: canary {p_can:.1f} ms vs champion {p_champ:.1f} ms; ratio {ratio:.3f} "
        f"[{low:.3f}, {high:.3f}], tolerated <= {threshold:.3f}"
    )
    return SignalComparison(
        signal="latency_p95",
        champion=p_champ,
        canary=p_can,
        difference=ratio,
        ci_low=low,
        ci_high=high,
        threshold=threshold,
        status=status,
        detail=detail,
    )


def _compare_reward(champ: list[float], can: list[float], policy: CanaryPolicy) -> SignalComparison:
    rule = policy.reward
    if len(champ) < 2 or len(can) < 2:
        return SignalComparison(
            signal="reward",
            champion=None,
            canary=None,
            difference=None,
            ci_low=None,
            ci_high=None,
            threshold=rule.max_decrease,
            status="not_measured",
            detail=f"reward: fewer than 2 scored requests in an arm "
            f"(champion {len(champ)}, canary {len(can)})",
        )
    m_can, m_champ = float(np.mean(can)), float(np.mean(champ))
    if np.ptp(can) == 0 and np.ptp(champ) == 0:
        low = high = m_can - m_champ
    else:
        from scipy import stats

        res = stats.ttest_ind(can, champ, equal_var=False)
        ci = res.confidence_interval(confidence_level=policy.confidence)
        low, high = float(ci.low), float(ci.high)
    # Worsening is a decrease: flip the sign so _classify sees "bigger is worse".
    status = _classify(-high, -low, rule.max_decrease)
    detail = (
        f"reward: canary mean {m_can:.4f} (n={len(can)}) vs champion {m_champ:.4f} "
        f"(n={len(champ)}); difference {m_can - m_champ:+.4f} [{low:+.4f}, {high:+.4f}], "
        f"tolerated -{rule.max_decrease:g}"
    )
    return SignalComparison(
        signal="reward",
        champion=m_champ,
        canary=m_can,
        difference=m_can - m_champ,
        ci_low=low,
        ci_high=high,
        threshold=rule.max_decrease,
        status=status,
        detail=detail,
    )


def _is_negative(event: FeedbackEvent, policy: CanaryPolicy) -> bool:
    if event.kind == "rating":
        value = event.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CanaryInputError(
                f"feedback {event.id}: rating value {value!r} is not a number (+1 / -1)"
            )
        return value < 0
    if event.kind == "correction":
        return policy.corrections_are_negative
    if event.kind == "reviewer_label":
        return str(event.value) in policy.negative_labels
    return False  # a preference pair says which answer is better, not that this one is bad


def _default_reward(key: str) -> Callable[[Interaction], float | None]:
    def reward(interaction: Interaction) -> float | None:
        return interaction.output_verdict.scores.get(key)

    return reward


def _arm_stats(
    route: Arm,
    interactions: list[Interaction],
    negative_ids: set[str],
    feedback_counts: dict[str, int],
    rewards: list[float],
) -> ArmStats:
    versions: dict[str, int] = {}
    for it in interactions:
        versions[str(it.model_version)] = versions.get(str(it.model_version), 0) + 1
    latencies = [it.latency_ms for it in interactions]
    return ArmStats(
        route=route,
        requests=len(interactions),
        versions=versions,
        output_blocks=sum(it.output_verdict.action == "block" for it in interactions),
        fallbacks=sum(it.fallback_used for it in interactions),
        errors=sum(it.status_code >= 500 or it.error is not None for it in interactions),
        negative_feedback=sum(it.id in negative_ids for it in interactions),
        feedback_events=sum(feedback_counts.get(it.id, 0) for it in interactions),
        latency_p95_ms=float(np.quantile(latencies, 0.95)) if latencies else None,
        reward_mean=float(np.mean(rewards)) if rewards else None,
        reward_n=len(rewards),
    )


def analyse(
    interactions: Sequence[Interaction],
    feedback: Sequence[FeedbackEvent],
    policy: CanaryPolicy,
    now: datetime,
    *,
    started_at: datetime | None = None,
    reward_fn: Callable[[Interaction], float | None] | None = None,
) -> CanaryVerdict:
    """Compare the canary arm with the champion arm over one window. Pure.

    Args:
        interactions: gateway log records; only routes ``champion`` and ``canary`` with
            timestamps in ``[started_at, now]`` are analysed, the rest are counted in
            ``counts`` (``unrouted``, ``out_of_window``) — nothing is dropped silently.
        feedback: feedback events, joined to interactions by ``interaction_id``; events
            for interactions outside the window or after ``now`` are counted, not used.
        policy: the canary policy.
        now: end of the window (timezone-aware).
        started_at: start of the window (when the canary started); default the first
            canary-routed interaction at or before ``now``.
        reward_fn: reward score of one interaction, or None when it has none; default
            ``interaction.output_verdict.scores[policy.reward.score_key]``.

    Raises:
        ValueError: ``now`` or ``started_at`` is naive, or ``started_at`` is after ``now``.
        CanaryInputError: a feedback rating is not a number.

    """
    if now.tzinfo is None or (started_at is not None and started_at.tzinfo is None):
        raise ValueError("now and started_at must be timezone-aware (UTC) datetimes")
    reward_of = reward_fn or _default_reward(policy.reward.score_key)
    counts = {
        "interactions": len(interactions),
        "champion": 0,
        "canary": 0,
        "unrouted": 0,
        "out_of_window": 0,
        "feedback": len(feedback),
        "feedback_used": 0,
        "feedback_unmatched": 0,
        "feedback_after_now": 0,
    }
    if started_at is None:
        canary_times = [
            it.timestamp for it in interactions if it.route == "canary" and it.timestamp <= now
        ]
        started_at = min(canary_times) if canary_times else now
    if started_at > now:
        raise ValueError(f"started_at {started_at.isoformat()} is after now {now.isoformat()}")

    arms: dict[str, list[Interaction]] = {"champion": [], "canary": []}
    for it in interactions:
        if it.route not in arms:
            counts["unrouted"] += 1
        elif not started_at <= it.timestamp <= now:
            counts["out_of_window"] += 1
        else:
            arms[it.route].append(it)
            counts[it.route] += 1

    in_window = {it.id for arm in arms.values() for it in arm}
    negative_ids: set[str] = set()
    feedback_counts: dict[str, int] = {}
    for event in feedback:
        if event.timestamp > now:
            counts["feedback_after_now"] += 1
        elif event.interaction_id not in in_window:
            counts["feedback_unmatched"] += 1
        else:
            counts["feedback_used"] += 1
            feedback_counts[event.interaction_id] = feedback_counts.get(event.interaction_id, 0) + 1
            if _is_negative(event, policy):
                negative_ids.add(event.interaction_id)

    rewards: dict[str, list[float]] = {}
    stats_by_arm: dict[str, ArmStats] = {}
    routes: tuple[Arm, ...] = ("champion", "canary")
    for route in routes:
        scores = [reward_of(it) for it in arms[route]]
        rewards[route] = [float(s) for s in scores if s is not None]
        stats_by_arm[route] = _arm_stats(
            route, arms[route], negative_ids, feedback_counts, rewards[route]
        )
    champ, can = stats_by_arm["champion"], stats_by_arm["canary"]

    comparisons = [
        _compare_rate(s, champ, can, getattr(policy, s), policy.confidence) for s in RATE_SIGNALS
    ]
    comparisons.append(
        _compare_latency(
            [it.latency_ms for it in arms["champion"]],
            [it.latency_ms for it in arms["canary"]],
            policy,
        )
    )
    comparisons.append(_compare_reward(rewards["champion"], rewards["canary"], policy))

    duration_s = (now - started_at).total_seconds()
    short: list[str] = []
    for route, arm in (("champion", champ), ("canary", can)):
        if arm.requests < policy.min_requests_per_arm:
            short.append(
                f"{route} arm has {arm.requests} of {policy.min_requests_per_arm} requests"
            )
    if duration_s < policy.min_duration_s:
        short.append(f"window spans {duration_s:.0f} s of {policy.min_duration_s:.0f} s")
    if len(can.versions) > 1:
        short.append(f"canary arm served several versions {can.versions}: restart the window")

    harmful = [c for c in comparisons if c.status == "harmful"]
    undecided = [
        c
        for c in comparisons
        if c.status == "inconclusive"
        or (c.status == "not_measured" and (c.signal != "reward" or policy.reward.required))
    ]
    reasons: list[str]
    decision: Decision
    if harmful and (not short or policy.early_rollback):
        decision = "rollback"
        reasons = [f"harmful: {c.detail}" for c in harmful]
        if short:
            reasons.append("early rollback before the minimums: " + "; ".join(short))
    elif short:
        decision = "inconclusive"
        reasons = ["extend the window: " + "; ".join(short)]
        reasons += [f"harmful (not acted on before the minimums): {c.detail}" for c in harmful]
    elif undecided:
        decision = "inconclusive"
        reasons = [f"extend the window, undecided: {c.detail}" for c in undecided]
    else:
        decision = "promote"
        reasons = ["every signal within tolerance with enough traffic and time"]
    reasons += [f"ok: {c.detail}" for c in comparisons if c.status == "ok"]
    reasons += [
        f"not measured: {c.detail}"
        for c in comparisons
        if c.status == "not_measured" and c not in undecided
    ]
    logger.info(
        "canary %s: champion %d req, canary %d req over %.0f s",
        decision,
        champ.requests,
        can.requests,
        duration_s,
    )
    return CanaryVerdict(
        decision=decision,
        reasons=reasons,
        champion=champ,
        canary=can,
        comparisons=comparisons,
        window_start=started_at,
        window_end=now,
        duration_s=duration_s,
        counts=counts,
        policy_version=policy.version,
        policy_digest=policy.digest,
    )
