"""Release tasks: evaluate, gate, canary, canary analysis, approval, promotion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from mlflow import MlflowClient
from prefect import get_run_logger, task

from loopwright.config import Settings
from loopwright.domain import load_domain
from loopwright.release.approval import ApprovalDecision, ApprovalInput, decide_approval
from loopwright.release.canary import CanaryVerdict, analyse, load_canary_policy
from loopwright.release.canary_logs import load_window
from loopwright.release.canary_wait import CanaryRun
from loopwright.release.config import ReleaseConfig
from loopwright.release.evaluate import evaluate_for_gate
from loopwright.release.gate import GateVerdict, decide, load_gate_policy
from loopwright.release.registry_ops import RegistryOps
from loopwright.release.summary import EvalSummary
from loopwright.storage import ObjectStore


def _ops(settings: Settings) -> RegistryOps:
    return RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")


@task(name="evaluate-candidate")
def evaluate_candidate(
    settings: Settings,
    candidate: str,
    champion: str | None,
    suites: list[str] | None = None,
    suite_dir: Path | None = None,
    policy: Path | None = None,
    workers: int = 1,
) -> tuple[EvalSummary, EvalSummary | None]:
    """Candidate and champion on the same samples (paired), logged to MLflow.

    Only the views the gate policy judges are produced (``policy``: the gate policy file,
    default the packaged one): the gateway view serves both versions behind the control
    stack, which roughly doubles the evaluation's time. Staged: suites whose comparison
    cannot yet resolve its margin get more samples (the policy's ``evaluation_stages``).
    ``workers``: Ray generation workers of the raw view.
    """
    name = settings.registered_model("policy")
    domain = load_domain(settings.domain)
    cand, champ = evaluate_for_gate(
        settings,
        f"models:/{name}/{candidate}",
        f"models:/{name}/{champion}" if champion else None,
        suite_dir=suite_dir or domain.suite_dir(),
        data_root=settings.data_repo.resolve() / "data" / domain.data_folder(),
        run_dir=settings.run_path / "eval" / f"{name}-{candidate}-vs-{champion}",
        suites=suites,
        policy=load_gate_policy(policy),
        workers=workers,
    )
    return (
        EvalSummary.model_validate(cand),
        EvalSummary.model_validate(champ) if champ is not None else None,
    )


@task(name="gate")
def gate_candidate(
    settings: Settings,
    candidate: str,
    summary: EvalSummary,
    champion: EvalSummary | None,
    policy: Path | None = None,
) -> GateVerdict:
    """The offline gate (first-run path without a champion); verdict and reasons -> tags."""
    verdict = decide(summary, champion, load_gate_policy(policy))
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
def analyse_canary(
    settings: Settings, candidate: str, started_at: datetime, policy: Path | None = None
) -> CanaryVerdict:
    """Both arms over the window from the shipped log; verdict promote/rollback/inconclusive."""
    store = ObjectStore.from_settings(settings)
    window = load_window(store, f"s3://{settings.object_store.bucket}", started_at)
    verdict = analyse(
        window.interactions,
        window.feedback,
        load_canary_policy(policy),
        datetime.now(UTC),
        started_at=started_at,
    )
    _ops(settings).set_version_tags(
        settings.registered_model("policy"), candidate, verdict.to_tags()
    )
    get_run_logger().info("canary %s: %s", verdict.decision, verdict.reasons)
    return verdict


@task(name="schedule-canary-check", retries=2, retry_delay_seconds=2)
def schedule_canary_check(
    deployment: str, profile: str, run: CanaryRun, config: ReleaseConfig, at: datetime
) -> str:
    """Schedule one run of the ``canary-check`` deployment at ``at``; returns its run id.

    The scheduled run is independent of this one (not a subflow): this run can end now
    and free its worker. A retry finds the run already scheduled (idempotency key).
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    # Called from sync code, run_deployment runs to completion (no coroutine).
    scheduled = run_deployment(
        deployment,
        parameters={
            "profile": profile,
            "run": run.model_dump(mode="json"),
            "config": config.model_dump(mode="json"),
        },
        scheduled_time=at,
        timeout=0,
        as_subflow=False,
        idempotency_key=f"canary-check-{run.candidate}-{run.started_at.isoformat()}-{at.isoformat()}",
    )
    get_run_logger().info("canary check of %s scheduled at %s", run.candidate, at.isoformat())
    assert isinstance(scheduled, FlowRun)
    return str(scheduled.id)


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
    poll_s: float = 2.0,
) -> ApprovalDecision:
    """Pause for the Prefect form or an MLflow approval tag, whichever comes first.

    Runs in the flow (Prefect pauses flows, not tasks). While the run is paused, a watcher
    reads the version's tags; an approval or rejection set in the MLflow UI resumes the
    run with that answer. A timeout or a rejection never promotes.
    """
    name = settings.registered_model("policy")
    requested = datetime.now(UTC)
    client = MlflowClient()
    received: ApprovalInput | None = None
    received_at: datetime | None = None
    if not auto_approve:
        received, received_at = _pause_until_answer(
            name, candidate, evidence, timeout, poll_s, client
        )
    tags = client.get_model_version(name, candidate).tags
    decision = decide_approval(
        requested_at=requested,
        now=datetime.now(UTC) if received is not None or auto_approve else requested + timeout,
        timeout=timeout,
        prefect_input=received,
        prefect_received_at=received_at,
        mlflow_tags=tags,
        auto_approve=auto_approve,
    )
    if decision is None:  # nothing arrived: the deadline has passed
        decision = ApprovalDecision(
            approved=False,
            by="loopwright:timeout",
            at=datetime.now(UTC),
            reason=f"no approval within {timeout}",
            channel="timeout",
        )
    _ops(settings).set_version_tags(name, candidate, decision.to_tags())
    return decision


def _pause_until_answer(
    name: str,
    candidate: str,
    evidence: str,
    timeout: timedelta,
    poll_s: float,
    client: MlflowClient,
) -> tuple[ApprovalInput | None, datetime | None]:
    """Pause the flow run with the approval form; an MLflow tag answer resumes it too."""
    import contextvars
    import threading

    from prefect.flow_runs import pause_flow_run, resume_flow_run
    from prefect.input import RunInput
    from prefect.runtime import flow_run

    from loopwright.release.approval import mlflow_approval

    run_id = flow_run.get_id()
    stop = threading.Event()

    def watch_registry() -> None:
        while not stop.wait(poll_s):
            try:
                tags = client.get_model_version(name, candidate).tags
                tagged = mlflow_approval(tags, datetime.now(UTC))
            except Exception:  # noqa: BLE001 - a transient registry error: try again
                continue
            if tagged is not None and run_id is not None:
                resume_flow_run(
                    UUID(str(run_id)),
                    run_input={
                        "approve": tagged.approved,
                        "reviewer": f"{tagged.by} (mlflow)",
                        "reason": tagged.reason,
                    },
                )
                return

    form = RunInput.subclass_from_base_model_type(ApprovalInput).with_initial_data(
        description=evidence
    )
    # A new thread starts with an empty context: carry this run's Prefect settings and
    # client context over, or the watcher would talk to whatever the process default is.
    context = contextvars.copy_context()
    watcher = threading.Thread(target=context.run, args=(watch_registry,), daemon=True)
    watcher.start()
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=int(timeout.total_seconds()),
            poll_interval=int(max(1, poll_s)),
            key=f"approval-{name}-{candidate}",
        )
    except Exception as exc:  # noqa: BLE001 - FlowPauseTimeout: no answer in time
        get_run_logger().warning("approval wait ended without an answer: %s", exc)
        return None, None
    finally:
        stop.set()
    return ApprovalInput.model_validate(answer.model_dump()), datetime.now(UTC)


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
