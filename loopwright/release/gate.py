"""Offline gate: a pure decision whether a candidate may become a canary.

``decide(candidate, champion, policy)`` judges the candidate's :class:`EvalSummary` per view
(raw model, model behind the gateway), per dimension and slice, against a versioned YAML
policy: absolute floors, non-inferiority against the champion on the same samples (paired
bootstrap CI), safety dimensions that never regress, a minimum sample count, margins that
must exceed the measured run-to-run noise, and a reward-hacking check. With no champion the
explicit first-run path judges floors only and says so. Every failed rule is a reason; the
verdict becomes MLflow model-version tags via :meth:`GateVerdict.to_tags`.
"""

from __future__ import annotations

import logging
import math
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loopwright.release.strict import (
    StrictModel,
    VersionStr,
    check_dimension_key,
    load_yaml,
    parse_model,
)
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

Direction = Literal["higher_is_better", "lower_is_better"]
SafetyRule = Literal["no_significant_regression", "non_inferiority_zero"]

_ALL_VIEWS: tuple[View, ...] = ("raw", "gateway")
# MLflow rejects tag values above 5000 characters on some backends (8000 on others).
MAX_TAG_CHARS = 5000


class DimensionRule(StrictModel):
    """How one dimension (or ``dimension/slice``) is judged.

    Attributes:
        direction: required: whether a larger metric value is better (accuracy) or worse
            (a rate of hallucinations or over-refusals); no default, so a policy can never
            silently judge a rate upside down.
        safety: a safety dimension never regresses: its margin is 0 and the policy's
            ``safety_rule`` applies instead of the non-inferiority margin.
        min_value: floor for ``higher_is_better`` metrics (one number, or one per view).
        max_value: ceiling for ``lower_is_better`` metrics (one number, or one per view).
        margin: non-inferiority margin in metric units, >= 0: the candidate passes when the
            lower bound of the paired CI of its improvement is >= ``-margin``.
        min_n: minimum samples (overrides the policy-wide ``min_n``).
        metric: when set, the summary must report exactly this metric for the key.
        views: views judged on this key (default: the policy's ``views``).
        required: when False a key missing from the summary is noted, not blocking.

    """

    direction: Direction
    safety: bool = False
    min_value: float | dict[View, float] | None = None
    max_value: float | dict[View, float] | None = None
    margin: float = Field(default=0.0, ge=0.0)
    min_n: int | None = Field(default=None, ge=1)
    metric: str | None = None
    views: list[View] | None = None
    required: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> DimensionRule:
        if self.direction == "higher_is_better" and self.max_value is not None:
            raise ValueError("max_value is for lower_is_better metrics; use min_value here")
        if self.direction == "lower_is_better" and self.min_value is not None:
            raise ValueError("min_value is for higher_is_better metrics; use max_value here")
        if self.safety and self.margin != 0.0:
            raise ValueError(
                f"safety dimensions never regress: margin must be 0, got {self.margin}"
            )
        return self

    def floor(self, view: str) -> float | None:
        """Return the worst acceptable value in ``view`` (a minimum or a maximum), or None."""
        bound = self.min_value if self.direction == "higher_is_better" else self.max_value
        if isinstance(bound, dict):
            return bound.get(view)  # type: ignore[call-overload]
        return bound

    def goodness(self, low: float, high: float) -> tuple[float, float]:
        """Re-express a delta CI so that positive means "candidate better"."""
        return (low, high) if self.direction == "higher_is_better" else (-high, -low)


class RewardHackingRule(StrictModel):
    """Block when the reward model says better while rule/reference-based scores say worse.

    Attributes:
        reward: the key whose metric is the reward-model score (e.g. ``helpfulness``).
        references: rule- or reference-based keys (correctness, hallucination, ...).
        reference_worse: ``significant`` (the paired CI of a reference key lies wholly on the
            worse side) or ``point_estimate`` (its delta is on the worse side at all).

    """

    reward: str
    references: list[str] = Field(min_length=1)
    reference_worse: Literal["significant", "point_estimate"] = "significant"

    @field_validator("reward")
    @classmethod
    def _reward_key(cls, value: str) -> str:
        return check_dimension_key(value)

    @field_validator("references")
    @classmethod
    def _reference_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            check_dimension_key(key)
        return value


class GatePolicy(StrictModel):
    """The versioned gate policy (``policies/default.yaml``); logged with every decision.

    Attributes:
        version: policy version, recorded in every verdict.
        views: views the candidate must be judged in (``raw``, ``gateway``).
        min_n: minimum samples per dimension and view, for values and paired comparisons.
        min_margin_over_noise: a non-safety margin must be at least this many run-to-run
            noise standard deviations; None disables the check.
        margin_below_noise: ``block`` (default: a margin inside the noise makes the gate
            flap) or ``warn``.
        safety_rule: ``no_significant_regression`` blocks a safety dimension whose paired
            CI lies wholly on the worse side; ``non_inferiority_zero`` blocks unless the CI
            lies wholly on the better side of 0 (stricter: any churn blocks).
        max_eval_errors: evaluation errors tolerated before the gate blocks.
        digest: sha256 of the policy file, set by :func:`load_gate_policy`.

    """

    version: VersionStr
    description: str = ""
    views: list[View] = Field(default_factory=lambda: list(_ALL_VIEWS), min_length=1)
    min_n: int = Field(default=30, ge=1)
    min_margin_over_noise: float | None = Field(default=2.0, ge=0.0)
    margin_below_noise: Literal["block", "warn"] = "block"
    safety_rule: SafetyRule = "no_significant_regression"
    max_eval_errors: int = Field(default=0, ge=0)
    dimensions: dict[str, DimensionRule] = Field(min_length=1)
    reward_hacking: RewardHackingRule | None = None
    digest: str | None = None

    @field_validator("dimensions")
    @classmethod
    def _dimension_keys(cls, value: dict[str, DimensionRule]) -> dict[str, DimensionRule]:
        for key in value:
            check_dimension_key(key)
        return value

    @model_validator(mode="after")
    def _reward_keys_known(self) -> GatePolicy:
        if self.reward_hacking is not None:
            keys = [self.reward_hacking.reward, *self.reward_hacking.references]
            missing = [k for k in keys if k not in self.dimensions]
            if missing:
                raise ValueError(
                    f"reward_hacking names {missing}, which have no rule under dimensions "
                    f"(their direction is needed); dimensions: {sorted(self.dimensions)}"
                )
        return self


def default_policy_path() -> Path:
    """Return the path of the packaged default gate policy file."""
    return Path(str(resources.files("loopwright.release") / "policies" / "default.yaml"))


def load_gate_policy(path: str | Path | None = None) -> GatePolicy:
    """Load and strictly validate a gate policy YAML (default: the packaged one).

    Raises:
        ConfigError: invalid YAML, an unknown key or dimension (the message lists the valid
            ones), or an inconsistent rule; always naming the file.

    """
    path = Path(path) if path is not None else default_policy_path()
    data, digest = load_yaml(path)
    policy = parse_model(GatePolicy, data, str(path))
    return policy.model_copy(update={"digest": digest})


class DimensionCheck(StrictModel):
    """The outcome for one key in one view, with the numbers it rests on.

    ``delta`` and its CI are candidate minus champion in metric units (not re-signed).
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
    passed: bool
    blocking: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def improvement(self) -> float | None:
        """Return the delta re-signed so that positive means the candidate is better."""
        if self.delta is None:
            return None
        return self.delta if self.direction == "higher_is_better" else -self.delta


class GateVerdict(StrictModel):
    """The gate's decision: ``passed`` only when no rule blocked.

    ``reasons`` lists every blocking reason first, then notes (first-run path, unmeasured
    optional keys, warnings); each is prefixed with ``[view] key:`` where it concerns one.
    """

    passed: bool
    reasons: list[str]
    per_dimension: list[DimensionCheck]
    policy_version: str
    policy_digest: str | None = None
    first_run: bool
    candidate_uri: str
    baseline_uri: str | None = None

    @property
    def blocking_reasons(self) -> list[str]:
        """Reasons that made the verdict fail (empty when it passed)."""
        return [r for r in self.reasons if not r.startswith("note:")]

    def worst_regressions(self, k: int = 3) -> list[DimensionCheck]:
        """Up to ``k`` checks with a paired delta, worst improvement first (negative only)."""
        paired = [c for c in self.per_dimension if (c.improvement() or 0.0) < 0.0]
        return sorted(paired, key=lambda c: c.improvement() or 0.0)[:k]

    def to_tags(self) -> dict[str, str]:
        """MLflow model-version tags; every value is under 5000 characters."""
        blocking = sorted({f"{c.view}:{c.key}" for c in self.per_dimension if not c.passed})
        tags = {
            "gate.verdict": "pass" if self.passed else "block",
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


def _check(
    key: str,
    view: View,
    rule: DimensionRule,
    policy: GatePolicy,
    cand_view: ViewSummary | None,
    champ_view: ViewSummary | None,
    compare: bool,
) -> DimensionCheck:
    """Judge one key in one view. ``compare`` is False on the first-run path."""
    blocking: list[str] = []
    notes: list[str] = []
    min_n = rule.min_n or policy.min_n
    floor = rule.floor(view)
    stat: DimensionStat | None = cand_view.values.get(key) if cand_view else None
    paired: PairedStat | None = cand_view.paired.get(key) if cand_view else None
    noise = cand_view.noise.get(key) if cand_view else None
    champ_stat = champ_view.values.get(key) if champ_view else None

    fields: dict[str, object] = {
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
            blocking.append("not measured: the eval summary has no value for this key")
        else:
            notes.append("not measured (optional key); no decision on it")
        return DimensionCheck.model_validate(
            {**fields, "passed": not blocking, "blocking": blocking, "notes": notes}
        )

    fields.update(metric=stat.metric, value=stat.value, ci_low=stat.ci_low, ci_high=stat.ci_high)
    fields["n"] = stat.n
    if rule.metric is not None and stat.metric != rule.metric:
        blocking.append(f"metric is {stat.metric!r}, the policy judges {rule.metric!r}")
    if stat.n < min_n:
        blocking.append(f"too few samples: n={stat.n} < min_n={min_n}")
    if floor is not None:
        worse = stat.value < floor if rule.direction == "higher_is_better" else stat.value > floor
        if worse:
            word = "floor" if rule.direction == "higher_is_better" else "ceiling"
            blocking.append(f"value {_fmt(stat.value)} is past the {word} {_fmt(floor)}")

    if compare:
        if paired is None:
            blocking.append(
                "no paired comparison with the champion: evaluate both on the same samples"
            )
        else:
            fields.update(
                delta=paired.delta,
                delta_ci_low=paired.ci_low,
                delta_ci_high=paired.ci_high,
                paired_n=paired.n,
                win_rate=paired.win_rate,
            )
            _compare(rule, policy, paired, noise, min_n, blocking, notes)
    elif not rule.safety and noise is not None:
        # On the first run no margin is applied; still tell the user if it will flap later.
        _noise_check(rule, policy, noise, [], notes)

    return DimensionCheck.model_validate(
        {**fields, "passed": not blocking, "blocking": blocking, "notes": notes}
    )


def _compare(
    rule: DimensionRule,
    policy: GatePolicy,
    paired: PairedStat,
    noise: float | None,
    min_n: int,
    blocking: list[str],
    notes: list[str],
) -> None:
    if paired.n < min_n:
        blocking.append(f"too few paired samples: n={paired.n} < min_n={min_n}")
    low, high = rule.goodness(paired.ci_low, paired.ci_high)
    shown = f"delta {paired.delta:+.4g} [{_fmt(paired.ci_low)}, {_fmt(paired.ci_high)}]"
    if rule.safety:
        if policy.safety_rule == "no_significant_regression":
            if high < 0.0:
                blocking.append(f"safety regression: {shown} is significantly worse")
            elif rule.goodness(paired.delta, paired.delta)[0] < 0.0:
                notes.append(f"safety delta {shown} leans worse but is not significant")
        elif low < 0.0:
            blocking.append(
                f"safety non-inferiority at margin 0 failed: {shown} is not wholly better"
            )
        return
    if low < -rule.margin:
        blocking.append(
            f"non-inferiority failed: {shown}; worse side of the CI exceeds margin "
            f"{_fmt(rule.margin)}"
        )
    _resolution_check(rule, paired, notes)
    _noise_check(rule, policy, noise, blocking, notes)


def _resolution_check(rule: DimensionRule, paired: PairedStat, notes: list[str]) -> None:
    """Say when the suite is too small for the margin (a note; the decision is unchanged).

    Non-inferiority needs the CI's worse side within the margin, so when the CI's half-width
    exceeds the margin, a candidate no different from the champion fails: only a clear
    improvement passes. The half-width shrinks as 1/sqrt(n), hence the sample estimate.
    """
    half_width = (paired.ci_high - paired.ci_low) / 2
    if rule.margin <= 0 or half_width <= rule.margin:
        return
    needed = math.ceil(paired.n * (half_width / rule.margin) ** 2)
    notes.append(
        f"suite too small for the margin: CI half-width {_fmt(half_width)} > margin "
        f"{_fmt(rule.margin)} at n={paired.n}, so a candidate equal to the champion fails "
        f"here; about {needed} paired samples bring the half-width to the margin"
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


def decide(candidate: EvalSummary, champion: EvalSummary | None, policy: GatePolicy) -> GateVerdict:
    """Decide whether ``candidate`` passes the offline gate. Pure; never raises on data.

    Args:
        candidate: the candidate's summary; its ``paired`` stats must compare it with
            ``champion`` on the same samples (``baseline_uri == champion.model_uri``).
        champion: the serving model's summary, or None for the explicit first-run path
            (floors, sample counts and eval errors only; the reasons say so).
        policy: the validated gate policy.

    Returns:
        A :class:`GateVerdict`; ``passed`` is True only when no rule blocked.

    """
    blocking: list[str] = []
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
            )
            checks[(view, key)] = check
            blocking.extend(f"[{view}] {key}: {r}" for r in check.blocking)
            notes.extend(f"note: [{view}] {key}: {r}" for r in check.notes)

    if compare:
        for judged in policy.views:
            hacked = _reward_hacking(policy, judged, checks)
            if hacked:
                blocking.append(hacked)

    verdict = GateVerdict(
        passed=not blocking,
        reasons=blocking + notes,
        per_dimension=list(checks.values()),
        policy_version=policy.version,
        policy_digest=policy.digest,
        first_run=first_run,
        candidate_uri=candidate.model_uri,
        baseline_uri=champion.model_uri if champion else None,
    )
    logger.info(
        "gate %s for %s (policy %s): %d blocking reason(s)",
        "PASS" if verdict.passed else "BLOCK",
        candidate.model_uri,
        policy.version,
        len(blocking),
    )
    return verdict
