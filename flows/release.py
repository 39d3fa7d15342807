"""Release flow: evaluate, gate, canary with live analysis, approval, promotion.

The canary serves for minutes to hours (``ReleaseConfig.window_s`` between analyses, up to
``max_canary_s``). How that wait is spent depends on how the release runs:

* Deployed (``recheck`` names the ``canary-check`` deployment): the release ends once the
  canary serves, and schedules a ``canary-check`` run at the first analysis time; each
  check analyses, then rolls back, goes on to approval and promotion, or schedules the
  next check. Chosen over ``suspend_flow_run`` because a suspended run is re-run from the
  top on resume, so the evaluation and gate tasks would need persisted, cached results to
  be skipped, and a check that is its own short run keeps every step visible in the UI and
  holds no worker between analyses.
* Direct call (the demo, tests): the same analyses and decision, waited for in-process.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.runtime import flow_run

from loopwright.config import Settings
from loopwright.release.approval import render_evidence_markdown
from loopwright.release.canary import CanaryVerdict
from loopwright.release.canary_wait import CanaryRun, CanaryStep, first_check_at, next_canary_step
from loopwright.release.config import ReleaseConfig, with_domain_policies
from tasks.nightly import current_version
from tasks.release import (
    analyse_canary,
    evaluate_candidate,
    gate_candidate,
    promote,
    rollback_canary,
    schedule_canary_check,
    start_canary,
    wait_for_approval,
)


@flow(name="release", log_prints=True)
def release_flow(
    settings: Settings, candidate: str, config: ReleaseConfig, recheck: str | None = None
) -> str:
    """Take a registered candidate version to champion, or stop with reasons.

    Args:
        settings: the stack; a deployed check reloads it from ``settings.profile``.
        candidate: the policy version to release.
        config: gate and canary policies (unset: the domain's, else the packaged ones),
            canary timing, approval.
        recheck: ``<flow>/<deployment>`` of the canary check: the canary's analyses then
            run as scheduled runs of it and this run ends once the canary serves. None:
            they run here, and this run waits for them.

    Returns:
        ``promoted``, ``blocked`` (offline gate), ``inconclusive`` (the gate's evaluation
        could not resolve a margin within its sample budget), ``rolled back`` (canary),
        ``not approved`` (rejection or timeout), or ``canary serving`` (deployed: the checks
        decide later).
    """
    config = with_domain_policies(config, settings.domain)
    champion = current_version(settings, "policy")
    summary, champion_summary = evaluate_candidate(
        settings,
        candidate,
        champion,
        config.suites,
        config.suite_dir,
        config.gate_policy,
        config.eval_workers,
    )
    gate = gate_candidate(settings, candidate, summary, champion_summary, config.gate_policy)
    if not gate.passed:
        print(f"candidate {candidate} {gate.decision} at the gate: {gate.blocking_reasons}")
        return "blocked" if gate.decision == "block" else "inconclusive"

    run = CanaryRun(
        candidate=candidate,
        champion=champion,
        started_at=datetime.now(UTC),
        gate=gate,
        summary=summary,
    )
    start_canary(settings, candidate, config.canary_fraction, "passed the offline gate")
    check_at = first_check_at(run.started_at, config)
    if recheck is not None:
        schedule_canary_check(recheck, settings.profile, run, config, check_at)
        print(f"canary {candidate} serving; first analysis at {check_at.isoformat()}")
        return "canary serving"

    while True:
        time.sleep(max(0.0, (check_at - datetime.now(UTC)).total_seconds()))
        canary, step = _analyse(settings, run, config)
        if step.next_check_at is None:
            return _finish(settings, run, config, canary, step)
        check_at = step.next_check_at


@flow(name="canary-decision", log_prints=True)
def canary_check_flow(
    settings: Settings, run: CanaryRun, config: ReleaseConfig, recheck: str
) -> str:
    """One scheduled analysis of a serving canary, and what follows from it.

    Returns:
        ``promoted``, ``rolled back``, ``not approved``, or ``canary serving`` (the next
        check is scheduled on ``recheck``).
    """
    canary, step = _analyse(settings, run, config)
    if step.next_check_at is not None:
        schedule_canary_check(recheck, settings.profile, run, config, step.next_check_at)
        print(f"{step.reason}; next analysis at {step.next_check_at.isoformat()}")
        return "canary serving"
    return _finish(settings, run, config, canary, step)


def _analyse(
    settings: Settings, run: CanaryRun, config: ReleaseConfig
) -> tuple[CanaryVerdict, CanaryStep]:
    """Analyse the canary over everything since it started; decide what follows."""
    canary = analyse_canary(settings, run.candidate, run.started_at, config.canary_policy)
    step = next_canary_step(
        canary.decision, canary.reasons, run.started_at, datetime.now(UTC), config
    )
    return canary, step


def _finish(
    settings: Settings,
    run: CanaryRun,
    config: ReleaseConfig,
    canary: CanaryVerdict,
    step: CanaryStep,
) -> str:
    """After the canary's last analysis: roll back, or approval and then promotion."""
    if step.action == "rollback":
        rollback_canary(settings, run.candidate, step.reason)
        return "rolled back"

    evidence = render_evidence_markdown(
        run.gate, run.summary, canary, {"MLflow": settings.mlflow_tracking_uri}
    )
    decision = wait_for_approval(
        settings,
        run.candidate,
        evidence,
        timeout=timedelta(seconds=config.approval_timeout_s),
        auto_approve=config.auto_approve,
    )
    if not decision.approved:
        rollback_canary(settings, run.candidate, f"not approved: {decision.reason}")
        return "not approved"
    promote(settings, run.candidate, run.champion, decision, str(flow_run.get_id()))
    return "promoted"
