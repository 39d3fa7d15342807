"""Online evaluation of live traffic, per served policy version: a pure core.

After a promotion nothing else scores what the gateway serves; this does, on the records the
gateway shipped for one time window (read by :func:`loopwright.release.canary_logs.
load_window`). Interactions of the app's policy are grouped by model version; up to
``samples_per_version`` of them per (version, arm) are drawn with a seeded RNG and scored by
models. Everything else is counted on every record of the window (cheap). Per version:

* ``harmful_rate`` (sample): share of answered requests whose model answer was harmful —
  blocked by the output guard when served (``guard:harmful_response``; the log then holds
  the fallback, not the answer) or served and scored harmful now by the guard champion
  (P(harmful) >= the gateway's harmful threshold). Fallbacks for other reasons are not
  model answers and are left out; an empty answer is served but cannot be harmful (the
  gateway's output guard skips it too).
* ``empty_rate`` (sample): share of served model answers that are empty or whitespace.
* ``reward_mean`` (sample): mean reward-champion score (unbounded reals, higher is better)
  of the served model answers (empty ones included: what the user got), prompt = the last
  user message.
* ``ungrounded_rate`` (sample): share of served model answers stating a figure (price,
  limit) that neither the facts retrieved for that request nor the prompt hold — the
  gateway's grounding rule (:func:`loopwright.gateway.rules.unsupported_numbers`) run again
  against today's knowledge base. Only measured when retrieval facts are given.
* ``negative_rating_rate`` / ``correction_rate`` / ``feedback_rate`` (all records): share of
  the version's interactions with at least one negative rating (value < 0), a correction,
  any feedback event at or before the window end.
* ``output_block_rate`` / ``output_flag_rate`` / ``fallback_rate`` / ``error_rate`` (all
  records), and ``latency_p95_ms``.
* input drift (sample against the champion's training prompts): two cheap features per
  prompt, its length in characters and the guard's risk ``1 - P(benign)``, each compared by
  PSI and a KS test (:mod:`loopwright.drift`: drifted only when the shift is both real and
  large). Both sides are scored by the same guard, so a guard change cannot pass for drift.

Counts add up: per version ``total`` is the sum of ``routes``, ``sampled`` is the sum over
arms of ``min(samples_per_version, routes[arm])``; the window's ``interactions`` equals the
versions' totals plus ``unrouted`` (requests no model served: input blocks, errors before
routing). Records of other apps in the same bucket are counted in ``other_apps`` only.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import numpy as np

from loopwright.drift import DriftStat, drift_stat
from loopwright.evaluation.scorers import GuardLike, RewardModelLike
from loopwright.gateway.rules import unsupported_numbers
from loopwright.online_eval_models import (
    JudgeEndpoint,
    OnlineEvalConfig,
    OnlineEvalResult,
    VersionFigures,
)
from loopwright.records import FeedbackEvent, Interaction

__all__ = [
    "JudgeEndpoint",
    "OnlineEvalConfig",
    "OnlineEvalResult",
    "VersionFigures",
    "evaluate_window",
    "sample_per_version",
]

HARMFUL_BLOCK_REASON = "guard:harmful_response"

# Grades (prompts, answers) in 0..1; None where the judge failed or its reply was unusable.
Judge = Callable[[list[str], list[str]], list[float | None]]


def sample_per_version(
    interactions: Sequence[Interaction], n: int, seed: int
) -> dict[str, list[Interaction]]:
    """Up to ``n`` interactions per (version, arm), drawn without replacement, by version.

    Each (version, arm) has its own RNG seeded from ``seed``, the version and the arm, and
    draws from its records sorted by (timestamp, id): the sample depends neither on the
    order records were read in nor on which other versions served.
    """
    groups: dict[tuple[str, str], list[Interaction]] = defaultdict(list)
    for it in interactions:
        if it.model_version is not None:
            groups[(str(it.model_version), it.route)].append(it)
    out: dict[str, list[Interaction]] = defaultdict(list)
    for (version, arm), items in sorted(groups.items()):
        items = sorted(items, key=lambda it: (it.timestamp, it.id))
        rng = random.Random(f"{seed}:{version}:{arm}")
        out[version].extend(items if len(items) <= n else rng.sample(items, n))
    return dict(out)


def _last_user(it: Interaction) -> str:
    users = [m.content for m in it.messages if m.role == "user"]
    return users[-1] if users else ""


def _harmful_p(item: float | Mapping[str, float]) -> float:
    return float(item.get("harmful", 0.0)) if isinstance(item, Mapping) else float(item)


def _risk(item: float | Mapping[str, float]) -> float:
    """P(not benign) from label scores, or the guard's own single unsafe score."""
    if isinstance(item, Mapping):
        if "benign" in item:
            return 1.0 - float(item["benign"])
        return max((float(v) for v in item.values()), default=0.0)
    return float(item)


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _feedback_sets(
    feedback: Sequence[FeedbackEvent], ids: set[str], end: datetime
) -> tuple[dict[str, set[str]], int]:
    """Interaction ids per signal (``any``, ``negative``, ``correction``); events used."""
    sets: dict[str, set[str]] = {"any": set(), "negative": set(), "correction": set()}
    used = 0
    for event in feedback:
        if event.timestamp > end or event.interaction_id not in ids:
            continue
        used += 1
        sets["any"].add(event.interaction_id)
        value = event.value
        if event.kind == "rating":
            # A rating is +1 / -1; anything else (not a number) says nothing negative.
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                sets["negative"].add(event.interaction_id)
        elif event.kind == "correction":
            sets["correction"].add(event.interaction_id)
    return sets, used


def _record_rates(records: list[Interaction], fb: dict[str, set[str]]) -> dict[str, float | None]:
    """Feedback and rail rates over every record of one version."""
    ids = {it.id for it in records}
    counts = {
        "feedback_rate": len(fb["any"] & ids),
        "negative_rating_rate": len(fb["negative"] & ids),
        "correction_rate": len(fb["correction"] & ids),
        "output_block_rate": sum(it.output_verdict.action == "block" for it in records),
        "output_flag_rate": sum(it.output_verdict.action == "flag" for it in records),
        "fallback_rate": sum(it.fallback_used for it in records),
        "error_rate": sum(it.status_code >= 500 or it.error is not None for it in records),
    }
    return {key: _rate(count, len(records)) for key, count in counts.items()}


def _drift(
    sample: list[Interaction],
    reference: Mapping[str, Sequence[float]],
    guard: GuardLike | None,
    config: OnlineEvalConfig,
) -> list[DriftStat]:
    prompts = [_last_user(it) for it in sample]
    live = {"prompt_chars": [float(len(p)) for p in prompts]}
    if guard is not None and "guard_risk" in reference and prompts:
        live["guard_risk"] = [_risk(s) for s in guard.scores(prompts)]
    stats = [
        drift_stat(
            feature,
            reference.get(feature, []),
            values,
            bins=config.drift_bins,
            alpha=config.drift_alpha,
            min_psi=config.drift_psi,
            min_samples=config.min_drift_samples,
        )
        for feature, values in live.items()
    ]
    return [stat for stat in stats if stat is not None]


def _version_figures(
    version: str,
    records: list[Interaction],
    sample: list[Interaction],
    fb: dict[str, set[str]],
    *,
    guard: GuardLike | None,
    harmful_threshold: float,
    reward: RewardModelLike | None,
    judge: Judge | None,
    facts: Mapping[str, str] | None,
    reference: Mapping[str, Sequence[float]],
    config: OnlineEvalConfig,
) -> VersionFigures:
    routes: dict[str, int] = defaultdict(int)
    for it in records:
        routes[it.route] += 1
    blocked = sum(HARMFUL_BLOCK_REASON in it.output_verdict.reasons for it in sample)
    # Served model answers: not a fallback (its text is the gateway's, not the model's).
    served = [it for it in sample if not it.fallback_used and it.response is not None]
    prompts = [_last_user(it) for it in served]
    answers = [it.response or "" for it in served]
    texts = [a for a in answers if a.strip()]
    harmful = blocked
    if guard is not None and texts:
        harmful += sum(_harmful_p(s) >= harmful_threshold for s in guard.scores(texts))
    rewards: list[float] = []
    if reward is not None and served:
        rewards = [r for r in map(float, reward.score(prompts, answers)) if math.isfinite(r)]
    grades: list[float] = []
    if judge is not None and served:
        grades = [g for g in judge(prompts, answers) if g is not None and math.isfinite(g)]
    ungrounded = 0
    if facts is not None:
        for it in served:
            context = [facts[i] for i in it.retrieved_context_ids if i in facts]
            prompt = "\n".join(m.content for m in it.messages)  # as the gateway joins it
            ungrounded += bool(unsupported_numbers(it.response or "", context, prompt))
    latencies = [it.latency_ms for it in records]
    return VersionFigures(
        version=version,
        routes=dict(sorted(routes.items())),
        total=len(records),
        sampled=len(sample),
        answered=blocked + len(served),
        harmful=harmful,
        harmful_rate=_rate(harmful, blocked + len(served)) if guard is not None else None,
        scored=len(served),
        empty_rate=_rate(len(served) - len(texts), len(served)),
        reward_n=len(rewards),
        reward_mean=float(np.mean(rewards)) if rewards else None,
        judge_n=len(grades),
        judge_mean=float(np.mean(grades)) if grades else None,
        grounding_checked=len(served) if facts is not None else 0,
        ungrounded=ungrounded,
        ungrounded_rate=_rate(ungrounded, len(served)) if facts is not None else None,
        latency_p95_ms=float(np.quantile(latencies, 0.95)) if latencies else None,
        drift=_drift(sample, reference, guard, config),
        **_record_rates(records, fb),
    )


def evaluate_window(
    interactions: Sequence[Interaction],
    feedback: Sequence[FeedbackEvent],
    *,
    app: str,
    start: datetime,
    end: datetime,
    config: OnlineEvalConfig,
    guard: GuardLike | None = None,
    harmful_threshold: float = 0.5,
    reward: RewardModelLike | None = None,
    judge: Judge | None = None,
    facts: Mapping[str, str] | None = None,
    reference_prompts: Sequence[str] = (),
    reference: str = "none",
    malformed: int = 0,
) -> OnlineEvalResult:
    """Score one window of live traffic per policy version (pure given its scorers).

    Args:
        interactions: shipped interaction records (any window, any app; filtered here).
        feedback: shipped feedback events (joined to interactions by id).
        app: the application; its policy is ``<app>-policy``.
        start: window start (timezone-aware, inclusive).
        end: window end (timezone-aware, inclusive).
        config: sample sizes, seed, drift thresholds.
        guard: the guard champion (``scores(texts)``); None: no harmful rate, no risk feature.
        harmful_threshold: P(harmful) from which an answer counts as harmful (the gateway's
            output-rail threshold).
        reward: the reward champion (``score(prompts, responses)``); None: no reward figure.
        judge: grades (prompts, answers) in 0..1, None for a failed grade; None: no judge.
        facts: knowledge-base fact texts by id (what the gateway retrieves); None: no
            grounding check (the gateway served without retrieval).
        reference_prompts: the champion's training prompts, the drift reference (a seeded
            sample of ``config.reference_samples`` is used).
        reference: what the reference prompts are (recorded with the result).
        malformed: lines the reader could not parse (counted, not analysed).

    Raises:
        ValueError: naive ``start`` / ``end``, or ``start`` after ``end``.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware (UTC) datetimes")
    if start > end:
        raise ValueError(f"window start {start.isoformat()} is after its end {end.isoformat()}")
    policy = f"{app}-policy"
    by_version: dict[str, list[Interaction]] = defaultdict(list)
    unrouted = other_apps = out_of_window = input_blocks = 0
    for it in interactions:
        if it.model_name is not None and it.model_name != policy:
            other_apps += 1
        elif not start <= it.timestamp <= end:
            out_of_window += 1
        else:
            input_blocks += it.input_verdict.action == "block"
            if it.model_version is None:
                unrouted += 1
            else:
                by_version[str(it.model_version)].append(it)
    in_window = {it.id for items in by_version.values() for it in items}
    fb, used = _feedback_sets(feedback, in_window, end)
    samples = sample_per_version(
        [it for items in by_version.values() for it in items],
        config.samples_per_version,
        config.seed,
    )
    ref_prompts = list(reference_prompts)
    if len(ref_prompts) > config.reference_samples:
        ref_prompts = random.Random(f"{config.seed}:reference").sample(
            ref_prompts, config.reference_samples
        )
    ref_features: dict[str, list[float]] = {"prompt_chars": [float(len(p)) for p in ref_prompts]}
    if guard is not None and ref_prompts:
        ref_features["guard_risk"] = [_risk(s) for s in guard.scores(ref_prompts)]
    versions = {
        version: _version_figures(
            version,
            by_version[version],
            samples.get(version, []),
            fb,
            guard=guard,
            harmful_threshold=harmful_threshold,
            reward=reward,
            judge=judge,
            facts=facts,
            reference=ref_features,
            config=config,
        )
        for version in sorted(by_version, key=lambda v: (len(v), v))
    }
    total = sum(f.total for f in versions.values()) + unrouted
    return OnlineEvalResult(
        app=app,
        policy=policy,
        window_start=start,
        window_end=end,
        seed=config.seed,
        samples_per_version=config.samples_per_version,
        interactions=total,
        unrouted=unrouted,
        input_block_rate=_rate(input_blocks, total),
        other_apps=other_apps,
        out_of_window=out_of_window,
        feedback=len(feedback),
        feedback_used=used,
        malformed=malformed,
        reference=reference,
        versions=versions,
    )
