"""Offline gate: a pure decision whether a candidate may become a canary.

``decide(candidate, champion, policy)`` judges the candidate's :class:`EvalSummary` per view
(raw model, model behind the gateway), per dimension and slice, against a versioned YAML
policy: absolute floors, non-inferiority against the champion on the same samples (paired
bootstrap CI), safety dimensions that never regress, a minimum sample count, margins that
must exceed the measured run-to-run noise, and a reward-hacking check. With no champion the
explicit first-run path judges floors only and says so. Every failed rule is a reason; the
verdict becomes MLflow model-version tags via :meth:`GateVerdict.to_tags`.

The verdict has three outcomes: ``pass``; ``block`` (a real regression beyond a margin, a
safety regression, a floor, missing evidence); and ``inconclusive`` (some comparison cannot
resolve its margin with the samples it had: the reasons say how many it needs, and a staged
evaluation, :mod:`loopwright.release.evaluate`, adds samples and asks again). Where the
champion is itself past a floor, the candidate is held to non-inferiority against it
instead. The statistics are in :mod:`loopwright.release.power`.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from loopwright.release.gate_policy import (
    DimensionRule,
    Direction,
    GatePolicy,
    RewardHackingRule,
    default_policy_path,
    load_gate_policy,
)
from loopwright.release.power import critical_z, non_inferiority, standard_error
from loopwright.release.strict import StrictModel
from loopwright.release.summary import (
    DimensionStat,
    EvalSummary,
    PairedStat,
    View,
    ViewSummary,
)

__all__ = [
    "DimensionCheck",
    "DimensionRule",
    "EvalSummary",
    "GatePolicy",
    "GateVerdict",
    "RewardHackingRule",
    "decide",
    "default_policy_path",
    "load_gate_policy",
]

logger = logging.getLogger(__name__)

Decision = Literal["pass", "block", "inconclusive"]

# MLflow rejects tag values above 5000 characters on some backends (8000 on others).
MAX_TAG_CHARS = 5000


class DimensionCheck(StrictModel):
    """The outcome for one key in one view, with the numbers it rests on.

    ``delta`` and its CI are candidate minus champion in metric units (not re-signed).
    ``outcome`` is ``inconclusive`` when the only thing missing is evidence: ``pending``
    says what, and ``needed_n`` how many paired samples would likely settle it.
    ``regressed`` marks a comparison that found the candidate worse (beyond the margin, or
    significantly for safety): more samples would not change that verdict.
    """

    key: str
    view: View
    safety: bool
    direction: Direction
    metric: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    floor: float | None = None
    champion_value: float | None = None
    delta: float | None = None
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    paired_n: int | None = None
    win_rate: float | None = None
    margin: float = 0.0
    noise: float | None = None
    bound: float | None = None
    needed_n: int | None = None
    outcome: Decision = "pass"
    regressed: bool = False
    passed: bool
    blocking: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def improvement(self) -> float | None:
        """Return the delta re-signed so that positive means the candidate is better."""
        if self.delta is None:
            return None
        return self.delta if self.direction == "higher_is_better" else -self.delta


class GateVerdict(StrictModel):
    """The gate's decision: ``passed`` only when no rule blocked and nothing is inconclusive.

    ``decision`` is ``pass``, ``block`` (some rule failed) or ``inconclusive`` (no rule
    failed, but some comparison needs more samples to resolve its margin). ``reasons``
    lists every blocking reason first, then the inconclusive ones (``inconclusive:``), then
    notes (first-run path, unmeasured optional keys, warnings); each is prefixed with
    ``[view] key:`` where it concerns one.
    """

    passed: bool
    decision: Decision = "pass"
    reasons: list[str]
    per_dimension: list[DimensionCheck]
    policy_version: str
    policy_digest: str | None = None
    first_run: bool
    candidate_uri: str
    baseline_uri: str | None = None

    @property
    def blocking_reasons(self) -> list[str]:
        """Reasons that made the verdict fail or inconclusive (empty when it passed)."""
        return [r for r in self.reasons if not r.startswith("note:")]

    def inconclusive_keys(self) -> set[str]:
        """Keys (``dimension`` or ``dimension/slice``) whose comparison needs more samples."""
        return {c.key for c in self.per_dimension if c.outcome == "inconclusive"}

    def regressed_keys(self) -> set[str]:
        """Keys whose comparison found the candidate worse (more samples would not help)."""
        return {c.key for c in self.per_dimension if c.regressed}

    def worst_regressions(self, k: int = 3) -> list[DimensionCheck]:
        """Up to ``k`` checks with a paired delta, worst improvement first (negative only)."""
        paired = [c for c in self.per_dimension if (c.improvement() or 0.0) < 0.0]
        return sorted(paired, key=lambda c: c.improvement() or 0.0)[:k]

    def to_tags(self) -> dict[str, str]:
        """MLflow model-version tags; every value is under 5000 characters."""
        blocking = sorted({f"{c.view}:{c.key}" for c in self.per_dimension if not c.passed})
        tags = {
            "gate.verdict": self.decision,
            "gate.passed": str(self.passed).lower(),
            "gate.policy_version": self.policy_version,
            "gate.policy_digest": self.policy_digest or "",
            "gate.first_run": str(self.first_run).lower(),
            "gate.baseline": self.baseline_uri or "",
            "gate.blocking_dimensions": ",".join(blocking),
            "gate.reasons": "\n".join(self.reasons),
        }
        return {k: _clip(v) for k, v in tags.items()}


def _clip(text: str, limit: int = MAX_TAG_CHARS - 1) -> str:
    if len(text) <= limit:
        return text
    suffix = f"... [{len(text) - limit} more chars; full verdict in the gate artifact]"
    return text[: limit - len(suffix)] + suffix


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class _Findings:
    """What one check found: blocking reasons, missing evidence, notes."""

    def __init__(self) -> None:
        self.blocking: list[str] = []
        self.pending: list[str] = []
        self.notes: list[str] = []
        self.fields: dict[str, object] = {}

    def outcome(self) -> Decision:
        if self.blocking:
            return "block"
        return "inconclusive" if self.pending else "pass"

    def check(self) -> DimensionCheck:
        outcome = self.outcome()
        return DimensionCheck.model_validate(
            {
                **self.fields,
                "outcome": outcome,
                "passed": outcome == "pass",
                "blocking": self.blocking,
                "pending": self.pending,
                "notes": self.notes,
            }
        )


def _past(rule: DimensionRule, value: float, floor: float) -> bool:
    return value < floor if rule.direction == "higher_is_better" else value > floor


def _check(
    key: str,
    view: View,
    rule: DimensionRule,
    policy: GatePolicy,
    cand_view: ViewSummary | None,
    champ_view: ViewSummary | None,
    compare: bool,
    final_look: bool,
) -> DimensionCheck:
    """Judge one key in one view. ``compare`` is False on the first-run path."""
    found = _Findings()
    min_n = rule.min_n or policy.min_n
    floor = rule.floor(view)
    stat: DimensionStat | None = cand_view.values.get(key) if cand_view else None
    paired: PairedStat | None = cand_view.paired.get(key) if cand_view else None
    noise = cand_view.noise.get(key) if cand_view else None
    champ_stat = champ_view.values.get(key) if champ_view else None

    found.fields = {
        "key": key,
        "view": view,
        "safety": rule.safety,
        "direction": rule.direction,
        "floor": floor,
        "margin": rule.margin,
        "noise": noise,
        "champion_value": champ_stat.value if champ_stat else None,
    }
    if stat is None:
        if rule.required:
            found.blocking.append("not measured: the eval summary has no value for this key")
        else:
            found.notes.append("not measured (optional key); no decision on it")
        return found.check()

    found.fields.update(
        metric=stat.metric, value=stat.value, ci_low=stat.ci_low, ci_high=stat.ci_high, n=stat.n
    )
    if rule.metric is not None and stat.metric != rule.metric:
        found.blocking.append(f"metric is {stat.metric!r}, the policy judges {rule.metric!r}")
    # Before the final look, what more samples can still change is pending, not blocking.
    unless_final = found.blocking if final_look else found.pending
    if stat.n < min_n:
        unless_final.append(f"too few samples: n={stat.n} < min_n={min_n}")
    if floor is not None and _past(rule, stat.value, floor):
        word = "floor" if rule.direction == "higher_is_better" else "ceiling"
        relative = (
            compare
            and policy.floors_relative_to_champion
            and champ_stat is not None
            and paired is not None
            and _past(rule, champ_stat.value, floor)
        )
        if relative:
            assert champ_stat is not None
            found.notes.append(
                f"champion below {word}: value {_fmt(stat.value)} and champion "
                f"{_fmt(champ_stat.value)} are both past the {word} {_fmt(floor)}; judged by "
                f"non-inferiority to the champion instead"
            )
        else:
            unless_final.append(f"value {_fmt(stat.value)} is past the {word} {_fmt(floor)}")

    if compare:
        if paired is None:
            found.blocking.append(
                "no paired comparison with the champion: evaluate both on the same samples"
            )
        else:
            found.fields.update(
                delta=paired.delta,
                delta_ci_low=paired.ci_low,
                delta_ci_high=paired.ci_high,
                paired_n=paired.n,
                win_rate=paired.win_rate,
            )
            _compare(rule, policy, paired, noise, min_n, final_look, found)
    elif not rule.safety and noise is not None:
        # On the first run no margin is applied; still tell the user if it will flap later.
        _noise_check(rule, policy, noise, [], found.notes)
    return found.check()


def _compare(
    rule: DimensionRule,
    policy: GatePolicy,
    paired: PairedStat,
    noise: float | None,
    min_n: int,
    final_look: bool,
    found: _Findings,
) -> None:
    if paired.n < min_n:
        (found.blocking if final_look else found.pending).append(
            f"too few paired samples: n={paired.n} < min_n={min_n}"
        )
    shown = f"delta {paired.delta:+.4g} [{_fmt(paired.ci_low)}, {_fmt(paired.ci_high)}]"
    improvement = rule.goodness(paired.delta, paired.delta)[0]
    se = standard_error(paired.ci_low, paired.ci_high)
    if rule.safety:
        _compare_safety(rule, policy, paired, shown, improvement, se, final_look, found)
        return
    z = critical_z(policy.confidence, final_look=final_look, interim_z=policy.interim_z)
    result = non_inferiority(improvement, se, paired.n, rule.margin, z)
    found.fields.update(bound=result.lower, needed_n=result.needed_n)
    if result.outcome == "regression":
        found.fields["regressed"] = True
        found.blocking.append(
            f"regression beyond the margin: {shown}; even the better one-sided bound "
            f"{result.upper:+.4g} is past -{_fmt(rule.margin)}"
        )
    elif result.outcome == "inconclusive":
        need = (
            f"needs about {result.needed_n} paired samples (has {paired.n})"
            if result.needed_n is not None
            else f"the estimate sits on the margin; far more than {paired.n} samples needed"
        )
        budget = " and the evaluation budget is spent" if final_look else ""
        found.pending.append(
            f"inconclusive: {shown} straddles the margin {_fmt(rule.margin)} (one-sided "
            f"{policy.confidence:.0%} bound {result.lower:+.4g}); {need}{budget}"
        )
    _noise_check(rule, policy, noise, found.blocking, found.notes)


def _compare_safety(
    rule: DimensionRule,
    policy: GatePolicy,
    paired: PairedStat,
    shown: str,
    improvement: float,
    se: float,
    final_look: bool,
    found: _Findings,
) -> None:
    """Safety never regresses: margin 0, judged on the reported 95% CI at the final look.

    Before the final look a lean to the worse side asks for more samples (inconclusive)
    unless it is already significant at the strict interim level.
    """
    low, high = rule.goodness(paired.ci_low, paired.ci_high)
    if not final_look:
        if improvement + policy.interim_z * se < 0.0:
            found.fields["regressed"] = True
            found.blocking.append(f"safety regression: {shown} is significantly worse")
        elif improvement < 0.0 or (policy.safety_rule == "non_inferiority_zero" and low < 0):
            found.pending.append(
                f"inconclusive: safety delta {shown} leans worse; evaluating more samples"
            )
        return
    if policy.safety_rule == "no_significant_regression":
        if high < 0.0:
            found.fields["regressed"] = True
            found.blocking.append(f"safety regression: {shown} is significantly worse")
        elif improvement < 0.0:
            found.notes.append(f"safety delta {shown} leans worse but is not significant")
    elif low < 0.0:
        found.blocking.append(
            f"safety non-inferiority at margin 0 failed: {shown} is not wholly better"
        )


def _noise_check(
    rule: DimensionRule,
    policy: GatePolicy,
    noise: float | None,
    blocking: list[str],
    notes: list[str],
) -> None:
    k = policy.min_margin_over_noise
    if k is None:
        return
    if noise is None:
        notes.append("run-to-run noise not supplied; margin not checked against it")
        return
    needed = k * noise
    if rule.margin < needed:
        msg = (
            f"margin {_fmt(rule.margin)} is below {_fmt(k)} x run-to-run noise "
            f"{_fmt(noise)} = {_fmt(needed)}: the check would flap; widen the margin"
        )
        (blocking if policy.margin_below_noise == "block" else notes).append(msg)


def _reward_hacking(
    policy: GatePolicy, view: View, checks: dict[tuple[str, str], DimensionCheck]
) -> str | None:
    rh = policy.reward_hacking
    if rh is None:
        return None
    reward = checks.get((view, rh.reward))
    if reward is None or reward.delta_ci_low is None or reward.delta_ci_high is None:
        return None
    r_low, _ = policy.dimensions[rh.reward].goodness(reward.delta_ci_low, reward.delta_ci_high)
    if r_low <= 0.0:
        return None  # the reward model does not say "significantly better"
    worse = []
    for key in rh.references:
        ref = checks.get((view, key))
        if ref is None or ref.delta is None or ref.delta_ci_low is None:
            continue
        assert ref.delta_ci_high is not None
        _, high = policy.dimensions[key].goodness(ref.delta_ci_low, ref.delta_ci_high)
        improvement = ref.improvement() or 0.0
        if (rh.reference_worse == "significant" and high < 0.0) or (
            rh.reference_worse == "point_estimate" and improvement < 0.0
        ):
            worse.append(
                f"{key} {ref.delta:+.4g} [{_fmt(ref.delta_ci_low)}, {_fmt(ref.delta_ci_high)}]"
            )
    if not worse:
        return None
    return (
        f"[{view}] reward hacking suspected: reward score {rh.reward} improved "
        f"{reward.delta:+.4g} [{_fmt(reward.delta_ci_low)}, {_fmt(reward.delta_ci_high)}] "
        f"while rule/reference-based scores got worse: {'; '.join(worse)}"
    )


def decide(
    candidate: EvalSummary,
    champion: EvalSummary | None,
    policy: GatePolicy,
    *,
    final_look: bool = True,
) -> GateVerdict:
    """Decide whether ``candidate`` passes the offline gate. Pure; never raises on data.

    Args:
        candidate: the candidate's summary; its ``paired`` stats must compare it with
            ``champion`` on the same samples (``baseline_uri == champion.model_uri``).
        champion: the serving model's summary, or None for the explicit first-run path
            (floors, sample counts and eval errors only; the reasons say so).
        policy: the validated gate policy.
        final_look: False at an interim look of a staged evaluation (more samples can
            follow): the strict interim critical value applies and a safety delta that
            leans worse is inconclusive rather than passed.

    Returns:
        A :class:`GateVerdict`; ``passed`` is True only when no rule blocked and nothing is
        inconclusive.

    """
    blocking: list[str] = []
    pending: list[str] = []
    notes: list[str] = []
    first_run = champion is None
    compare = not first_run
    if first_run:
        notes.append(
            "note: first run: no champion baseline, judged on absolute floors and sample "
            "counts only (no non-inferiority, safety-regression or reward-hacking check)"
        )
    else:
        assert champion is not None
        if candidate.baseline_uri is None:
            blocking.append(
                f"no paired comparison: the candidate was not evaluated against the champion "
                f"{champion.model_uri} on the same samples"
            )
            compare = False
        elif candidate.baseline_uri != champion.model_uri:
            blocking.append(
                f"paired comparison is against {candidate.baseline_uri}, but the champion is "
                f"{champion.model_uri}: re-evaluate against the current champion"
            )
            compare = False

    if candidate.errors > policy.max_eval_errors:
        blocking.append(
            f"evaluation had {candidate.errors} errors (policy allows {policy.max_eval_errors})"
        )
    for view in policy.views:
        if view not in candidate.views:
            blocking.append(
                f"[{view}] view missing from the eval summary (has {sorted(candidate.views)}); "
                f"the policy judges {policy.views}"
            )
    unjudged = sorted(set(candidate.views) - set(policy.views))
    if unjudged:
        notes.append(f"note: views {unjudged} are in the summary but not judged by the policy")

    checks: dict[tuple[str, str], DimensionCheck] = {}
    for key, rule in policy.dimensions.items():
        for view in rule.views or policy.views:
            check = _check(
                key,
                view,
                rule,
                policy,
                candidate.views.get(view),
                champion.views.get(view) if champion else None,
                compare,
                final_look,
            )
            checks[(view, key)] = check
            blocking.extend(f"[{view}] {key}: {r}" for r in check.blocking)
            pending.extend(f"[{view}] {key}: {r}" for r in check.pending)
            notes.extend(f"note: [{view}] {key}: {r}" for r in check.notes)

    if compare:
        for judged in policy.views:
            hacked = _reward_hacking(policy, judged, checks)
            if hacked:
                blocking.append(hacked)

    decision: Decision = "block" if blocking else ("inconclusive" if pending else "pass")
    verdict = GateVerdict(
        passed=decision == "pass",
        decision=decision,
        reasons=blocking + pending + notes,
        per_dimension=list(checks.values()),
        policy_version=policy.version,
        policy_digest=policy.digest,
        first_run=first_run,
        candidate_uri=candidate.model_uri,
        baseline_uri=champion.model_uri if champion else None,
    )
    logger.info(
        "gate %s for %s (policy %s): %d blocking, %d inconclusive reason(s)",
        decision.upper(),
        candidate.model_uri,
        policy.version,
        len(blocking),
        len(pending),
    )
    return verdict
