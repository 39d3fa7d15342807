"""The offline gate's policy: a versioned YAML file of per-dimension rules.

``policies/default.yaml`` is the packaged one. Every model here is strict: an unknown key
or dimension fails naming the valid ones. The decision itself is in
:mod:`loopwright.release.gate`.
"""

from __future__ import annotations

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
from loopwright.release.summary import View

__all__ = [
    "Direction",
    "DimensionRule",
    "GatePolicy",
    "RewardHackingRule",
    "SafetyRule",
    "default_policy_path",
    "load_gate_policy",
]

Direction = Literal["higher_is_better", "lower_is_better"]
SafetyRule = Literal["no_significant_regression", "non_inferiority_zero"]

_ALL_VIEWS: tuple[View, ...] = ("raw", "gateway")


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
        confidence: one-sided confidence of the non-inferiority test, in (0.5, 1): a
            candidate exactly one margin worse passes with probability ``1 - confidence``.
        interim_z: critical value at an interim look of a staged evaluation (more samples
            may follow); the final look uses ``confidence``'s (Haybittle-Peto).
        floors_relative_to_champion: where the champion itself is past a floor, a
            candidate non-inferior to it passes that floor (with a note) instead of being
            blocked by a level its predecessor never reached.
        evaluation_stages: shares of each suite's sample families evaluated at each look,
            increasing, ending at 1.0; after an interim look only the suites of
            inconclusive keys get more samples. ``[1.0]`` evaluates everything at once.
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
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    interim_z: float = Field(default=3.0, ge=0.0)
    floors_relative_to_champion: bool = True
    evaluation_stages: list[float] = Field(default_factory=lambda: [0.5, 1.0], min_length=1)
    dimensions: dict[str, DimensionRule] = Field(min_length=1)
    reward_hacking: RewardHackingRule | None = None
    digest: str | None = None

    @field_validator("dimensions")
    @classmethod
    def _dimension_keys(cls, value: dict[str, DimensionRule]) -> dict[str, DimensionRule]:
        for key in value:
            check_dimension_key(key)
        return value

    @field_validator("evaluation_stages")
    @classmethod
    def _stages(cls, value: list[float]) -> list[float]:
        increasing = all(0 < a < b for a, b in zip(value, value[1:], strict=False))
        if not increasing or value[0] <= 0 or value[-1] != 1.0:
            raise ValueError(
                f"evaluation_stages must increase within (0, 1] and end at 1.0, e.g. "
                f"[0.5, 1.0]; got {value}"
            )
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
