"""How long a canary serves: the pure promote / rollback / keep-waiting decision.

A canary is analysed every ``ReleaseConfig.window_s`` seconds over everything it served
since it started (:func:`loopwright.release.canary.analyse`). An analysis that says
``promote`` or ``rollback`` ends the wait; ``inconclusive`` (too little traffic or time
for the canary policy's minimums, or a signal still undecided) waits for the next
analysis, until ``ReleaseConfig.max_canary_s`` after the start: the last analysis falls
on that deadline, and an inconclusive one there rolls the canary back.

The same decision serves the in-process wait (a direct call of the release flow) and the
deployed one (each analysis its own scheduled flow run); nothing here knows which.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from loopwright.release.canary import Decision
from loopwright.release.config import ReleaseConfig
from loopwright.release.gate import GateVerdict
from loopwright.release.summary import EvalSummary

CanaryAction = Literal["promote", "rollback", "wait"]


class CanaryStep(BaseModel):
    """What to do after one canary analysis.

    Attributes:
        action: ``promote`` (go on to approval), ``rollback`` (end the canary) or
            ``wait`` (analyse again at ``next_check_at``).
        reason: why, for the logs and the rollback record.
        next_check_at: when to analyse again (timezone-aware); set exactly when waiting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: CanaryAction
    reason: str
    next_check_at: datetime | None = None

    @model_validator(mode="after")
    def _next_check_iff_waiting(self) -> CanaryStep:
        if (self.action == "wait") != (self.next_check_at is not None):
            raise ValueError("next_check_at is set exactly when the action is 'wait'")
        return self


class CanaryRun(BaseModel):
    """One release's canary, as a later analysis needs it (a deployment parameter).

    Attributes:
        candidate / champion: registry versions of the policy (champion None: first run).
        started_at: when the canary started serving (timezone-aware); the analysis window
            and the deadline count from here.
        gate: the offline gate's verdict, and ``summary`` the candidate's evaluation: the
            evidence a person approves on, carried so a re-check needs no re-evaluation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str
    champion: str | None
    started_at: datetime
    gate: GateVerdict
    summary: EvalSummary


def first_check_at(started_at: datetime, config: ReleaseConfig) -> datetime:
    """When the first analysis of a canary started at ``started_at`` runs."""
    return started_at + timedelta(seconds=min(config.window_s, config.max_canary_s))


def next_canary_step(
    decision: Decision,
    reasons: list[str],
    started_at: datetime,
    now: datetime,
    config: ReleaseConfig,
) -> CanaryStep:
    """Decide from one analysis's verdict whether the canary is done.

    Args:
        decision: the analysis verdict (``promote``, ``rollback`` or ``inconclusive``).
        reasons: the analysis's reasons (copied into the step's reason).
        started_at: when the canary started serving (timezone-aware).
        now: when the analysis ran (timezone-aware).
        config: ``window_s`` (time between analyses) and ``max_canary_s`` (the deadline,
            seconds after ``started_at``).

    Returns:
        ``promote`` or ``rollback`` as the analysis said; for ``inconclusive``, ``wait``
        until ``min(now + window_s, deadline)``, or ``rollback`` once ``now`` has reached
        the deadline.
    """
    why = "; ".join(reasons)
    if decision == "promote":
        return CanaryStep(action="promote", reason=f"canary promote: {why}")
    if decision == "rollback":
        return CanaryStep(action="rollback", reason=f"canary rollback: {why}")
    deadline = started_at + timedelta(seconds=config.max_canary_s)
    if now >= deadline:
        return CanaryStep(
            action="rollback",
            reason=(
                f"canary still inconclusive after {(now - started_at).total_seconds():.0f} s "
                f"(release.max_canary_s = {config.max_canary_s:g}): {why}"
            ),
        )
    return CanaryStep(
        action="wait",
        reason=f"canary inconclusive: {why}",
        next_check_at=min(now + timedelta(seconds=config.window_s), deadline),
    )
