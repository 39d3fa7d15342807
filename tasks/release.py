"""Release tasks: evaluate, gate, canary, canary analysis, approval, promotion."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import get_run_logger, task

from loopwright.config import Settings
from loopwright.release.approval import ApprovalDecision, ApprovalInput, decide_approval
from loopwright.release.canary import CanaryVerdict, analyse, load_canary_policy
from loopwright.release.canary_logs import load_window
from loopwright.release.evaluate import evaluate_for_gate
from loopwright.release.gate import GateVerdict, decide, load_gate_policy
from loopwright.release.registry_ops import RegistryOps
from loopwright.release.summary import EvalSummary
from loopwright.storage import ObjectStore


def _ops(settings: Settings) -> RegistryOps:
    return RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")


@task(name="evaluate-candidate")
def evaluate_candidate(
    settings: Settings, candidate: str, champion: str | None, suites: list[str] | None = None
) -> tuple[EvalSummary, EvalSummary | None]:
    """Candidate and champion on the same samples (paired), logged to MLflow."""
    name = settings.registered_model("policy")
    root = settings.data_repo.resolve() / "data"
    cand, champ = evaluate_for_gate(
        settings,
        f"models:/{name}/{candidate}",
        f"models:/{name}/{champion}" if champion else None,
        suite_dir=root / "helpdesk" / "suites",
        data_root=root / "helpdesk",
        run_dir=settings.run_path / "eval" / f"{name}-{candidate}-vs-{champion}",
        suites=suites,
    )
    return (
        EvalSummary.model_validate(cand),
        EvalSummary.model_validate(champ) if champ is not None else None,
    )


@task(name="gate")
def gate_candidate(
    settings: Settings, candidate: str, summary: EvalSummary, champion: EvalSummary | None
) -> GateVerdict:
    """The offline gate (first-run path without a champion); verdict and reasons -> tags."""
    verdict = decide(summary, champion, load_gate_policy())
    _ops(settings).set_version_tags(
        settings.registered_model("policy"), candidate, verdict.to_tags()
    )
    get_run_logger().info("gate passed=%s: %s", verdict.passed, verdict.reasons)
    return verdict


@task(name="start-canary", retries=2, retry_delay_seconds=2)
def start_canary(settings: Settings, candidate: str, fraction: float, reason: str) -> None:
    """Alias ``canary`` and the traffic fraction the gateway reads."""
    _ops(settings).start_canary(
        settings.registered_model("policy"),
        candidate,
        fraction,
        reason=reason,
        actor="loopwright:release",
    )


@task(name="canary-analysis")
def analyse_canary(settings: Settings, candidate: str, started_at: datetime) -> CanaryVerdict:
    """Both arms over the window from the shipped log; verdict promote/rollback/inconclusive."""
    store = ObjectStore.from_settings(settings)
    window = load_window(store, f"s3://{settings.object_store.bucket}", started_at)
    verdict = analyse(
        window.interactions,
        window.feedback,
        load_canary_policy(),
        datetime.now(UTC),
        started_at=started_at,
    )
    _ops(settings).set_version_tags(
        settings.registered_model("policy"), candidate, verdict.to_tags()
    )
    get_run_logger().info("canary %s: %s", verdict.decision, verdict.reasons)
    return verdict


@task(name="rollback-canary", retries=2, retry_delay_seconds=2)
def rollback_canary(settings: Settings, candidate: str, reason: str) -> None:
    """Remove the canary alias and fraction; record why."""
    _ops(settings).rollback_canary(
        settings.registered_model("policy"), reason, "loopwright:release", version=candidate
    )


def wait_for_approval(
    settings: Settings,
    candidate: str,
    evidence: str,
    *,
    timeout: timedelta,
    auto_approve: bool,
    poll_s: float = 5.0,
) -> ApprovalDecision:
    """Pause for the Prefect form or an MLflow approval tag, whichever comes first.

    Runs in the flow (Prefect pauses flows, not tasks). Each wait is a short pause; between
    pauses the version's tags are read, so an approval set in the MLflow UI counts too.
    A timeout or a rejection never promotes.
    """
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput

    name = settings.registered_model("policy")
    requested = datetime.now(UTC)
    form = RunInput.subclass_from_base_model_type(ApprovalInput).with_initial_data(
        description=evidence, approve=False, reviewer="", reason=""
    )
    client = MlflowClient()
    while True:
        received: ApprovalInput | None = None
        received_at: datetime | None = None
        if not auto_approve:
            try:
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=int(poll_s),
                    poll_interval=1,
                    key=f"approval-{name}-{candidate}",
                )
                received = ApprovalInput.model_validate(answer.model_dump())
                received_at = datetime.now(UTC)
            except Exception:  # noqa: BLE001 - a pause timeout: check the other channel
                pass
        tags = client.get_model_version(name, candidate).tags
        decision = decide_approval(
            requested_at=requested,
            now=datetime.now(UTC),
            timeout=timeout,
            prefect_input=received,
            prefect_received_at=received_at,
            mlflow_tags=tags,
            auto_approve=auto_approve,
        )
        if decision is not None:
            _ops(settings).set_version_tags(name, candidate, decision.to_tags())
            return decision
        time.sleep(0 if not auto_approve else poll_s)


@task(name="promote", retries=2, retry_delay_seconds=2)
def promote(
    settings: Settings,
    candidate: str,
    champion: str | None,
    decision: ApprovalDecision,
    run_id: str,
) -> str:
    """Move champion to the candidate (previous to the old one); idempotent per run id."""
    result = _ops(settings).promote(
        settings.registered_model("policy"),
        candidate,
        decision,
        expected_champion=champion,
        request_id=f"promote-{run_id}",
    )
    return result.status


def write_summary(path: Path, payload: dict[str, Any]) -> None:
    """Persist a small JSON record (the flow's outcome) for the demo and for people."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
