"""Release flow: evaluate, gate, canary with live analysis, approval, promotion."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.runtime import flow_run

from loopwright.config import Settings
from loopwright.release.approval import render_evidence_markdown
from loopwright.release.config import ReleaseConfig
from tasks.nightly import current_version
from tasks.release import (
    analyse_canary,
    evaluate_candidate,
    gate_candidate,
    promote,
    rollback_canary,
    start_canary,
    wait_for_approval,
)


@flow(name="release", log_prints=True)
def release_flow(settings: Settings, candidate: str, config: ReleaseConfig) -> str:
    """Take a registered candidate version to champion, or stop with reasons.

    Returns:
        ``promoted``, ``blocked`` (offline gate), ``rolled back`` (canary), or
        ``not approved`` (rejection or timeout).
    """
    champion = current_version(settings, "policy")
    summary, champion_summary = evaluate_candidate(
        settings, candidate, champion, config.suites, config.suite_dir, config.gate_policy
    )
    gate = gate_candidate(settings, candidate, summary, champion_summary, config.gate_policy)
    if not gate.passed:
        print(f"candidate {candidate} blocked by the gate: {gate.reasons}")
        return "blocked"

    started = datetime.now(UTC)
    start_canary(settings, candidate, config.canary_fraction, "passed the offline gate")
    for _ in range(config.max_windows):
        time.sleep(config.window_s)
        canary = analyse_canary(settings, candidate, started, config.canary_policy)
        if canary.decision != "inconclusive":
            break
    if canary.decision != "promote":
        rollback_canary(settings, candidate, f"canary {canary.decision}: {canary.reasons}")
        return "rolled back"

    evidence = render_evidence_markdown(
        gate, summary, canary, {"MLflow": settings.mlflow_tracking_uri}
    )
    decision = wait_for_approval(
        settings,
        candidate,
        evidence,
        timeout=timedelta(seconds=config.approval_timeout_s),
        auto_approve=config.auto_approve,
    )
    if not decision.approved:
        rollback_canary(settings, candidate, f"not approved: {decision.reason}")
        return "not approved"
    promote(settings, candidate, champion, decision, str(flow_run.get_id()))
    return "promoted"
