"""Deployments runnable from the Prefect UI: the nightly loop on a schedule, and each part.

Deployment parameters are stored by the Prefect server, so these entry flows take a
*profile name* (never a settings object with secrets) and load the settings themselves.
``loopwright deploy`` serves them all from one process (``prefect.serve``); a work-pool
setup can use ``infra/prefect.yaml`` instead. Each night and release is configured by the
profile's ``nightly:`` and ``release:`` sections; a release's canary analyses are runs of
the ``canary-check`` deployment, scheduled one after another (see :mod:`flows.release`).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect import flow, serve
from prefect.deployments.runner import RunnerDeployment

from flows.nightly import nightly_flow, nightly_stage_flow
from flows.online_eval import online_eval_flow
from flows.release import canary_check_flow, release_flow
from loopwright.client_env import apply_client_env
from loopwright.config import Settings, load_settings
from loopwright.domain import domain_hook, load_domain
from loopwright.gateway.alerts import ALERT_EVENT
from loopwright.nightly import NightlyStage
from loopwright.release.canary_wait import CanaryRun
from loopwright.release.config import ReleaseConfig
from tasks.demo import rollback

# ``<flow name>/<deployment name>`` of the canary check that ``serve_all`` registers.
CANARY_CHECK = "canary-check/canary-check"


def _settings(profile: str) -> Settings:
    settings = load_settings(profile)
    apply_client_env(settings)
    return settings


def _release(settings: Settings, auto_approve: bool | None) -> ReleaseConfig:
    """The profile's release section; ``auto_approve`` (None: the profile's) overrides."""
    if auto_approve is None:
        return settings.release
    return settings.release.model_copy(update={"auto_approve": auto_approve})


@flow(name="nightly-loop", log_prints=True)
def nightly_loop(profile: str = "local", auto_approve: bool | None = None) -> str:
    """Night: data -> reward -> candidate, then gate -> canary (checks follow later)."""
    settings = _settings(profile)
    candidate = nightly_flow(settings, settings.nightly)
    if candidate is None:
        return "no new data"
    release = _release(settings, auto_approve)
    return release_flow(settings, candidate.version, release, recheck=CANARY_CHECK)


@flow(name="nightly-data-and-training", log_prints=True)
def nightly_only(profile: str = "local") -> str | None:
    """Stages 1-5 alone: ingest, validate, curate, reward refresh, fine-tune."""
    settings = _settings(profile)
    candidate = nightly_flow(settings, settings.nightly)
    return candidate.version if candidate else None


@flow(name="nightly-one-stage", log_prints=True)
def nightly_one_stage(profile: str, stage: NightlyStage) -> str:
    """One nightly stage alone (inputs from where the earlier stages left them)."""
    settings = _settings(profile)
    return nightly_stage_flow(settings, stage, settings.nightly)


@flow(name="promote", log_prints=True)
def promote_version(profile: str, version: str, auto_approve: bool | None = None) -> str:
    """Gate and canary for one registered candidate version (checks follow later)."""
    settings = _settings(profile)
    release = _release(settings, auto_approve)
    return release_flow(settings, version, release, recheck=CANARY_CHECK)


@flow(name="canary-check", log_prints=True)
def canary_check(profile: str, run: CanaryRun, config: ReleaseConfig) -> str:
    """One analysis of a serving canary: roll back, approve and promote, or check again.

    Scheduled by the release (``config`` is the one that release ran with), never by hand.
    """
    return canary_check_flow(_settings(profile), run, config, CANARY_CHECK)


@flow(name="rollback", log_prints=True)
def rollback_champion(profile: str = "local", reason: str = "rollback from the Prefect UI") -> str:
    """Champion back to ``previous`` (recorded in the audit history)."""
    return rollback(_settings(profile), reason)


@flow(name="online-eval-loop", log_prints=True)
def online_eval_loop(profile: str = "local") -> str:
    """Score the latest window of live traffic per policy version (every ``interval_s``)."""
    settings = _settings(profile)
    result = online_eval_flow(settings, settings.online_eval)
    return (
        "; ".join(f"v{v}: {f.sampled} of {f.total} sampled" for v, f in result.versions.items())
        or "no traffic in the window"
    )


@flow(name="bootstrap-embedded-default", log_prints=True)
def bootstrap_default(profile: str = "local") -> dict[str, str]:
    """The domain's data and v1 models (skipped when already registered; the example's)."""
    settings = _settings(profile)
    build = domain_hook(settings.domain, "bootstrap", "the bootstrap deployment")
    versions = build(settings, force=False, tiny=False, seed=0)
    return {kind: v.version for kind, v in versions.items()}


def ensure_rollback_automation(settings: Settings, rollback_deployment_id: UUID) -> UUID:
    """The automation that runs the rollback deployment when an alert asks for it.

    It fires on each ``loopwright.alert.firing`` event of this app whose alert is labelled
    ``response: rollback`` (the gateway turns firing alerts into such events,
    :mod:`loopwright.gateway.alerts`); the rollback's reason names the alert, so the audit
    history says why. Recreated on every call (an earlier one of the same name is replaced),
    so a redeploy points it at the current rollback deployment.

    Returns:
        The automation's id.
    """
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    name = f"{settings.app}: roll back on alert"
    with contextlib.suppress(ValueError):  # ValueError: none of that name yet
        cast(Automation, Automation.read(name=name)).delete()
    automation = Automation(
        name=name,
        description="A firing alert labelled response=rollback moves champion back.",
        trigger=EventTrigger(
            expect={ALERT_EVENT},
            match={
                "prefect.resource.id": f"loopwright.app.{settings.app}",
                "loopwright.response": "rollback",
            },
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=rollback_deployment_id,
                parameters={
                    "reason": {
                        "__prefect_kind": "jinja",
                        "template": "alert {{ event.payload.alertname }}: "
                        "{{ event.payload.summary }}",
                    }
                },
                job_variables=None,
            )
        ],
    )
    # ``create`` and ``read`` are sync here (no event loop).
    created = cast(Automation, automation.create())
    if created.id is None:
        raise RuntimeError(f"the Prefect server did not create the automation {name!r}")
    return created.id


def serve_all(profile: str, cron: str = "0 2 * * *") -> None:
    """Register every deployment and the alert automation, then serve (blocks).

    The online evaluation runs every ``online_eval.interval_s`` seconds of the profile.
    """
    params = {"profile": profile}
    settings = _settings(profile)
    # ``to_deployment`` and ``apply`` are sync here (no event loop).
    rollback_deployment = cast(
        RunnerDeployment, rollback_champion.to_deployment(name="rollback", parameters=params)
    )
    ensure_rollback_automation(settings, cast(UUID, rollback_deployment.apply()))
    deployments = [
        nightly_loop.to_deployment(name="nightly", cron=cron, parameters=params),
        nightly_only.to_deployment(name="stages-1-5", parameters=params),
        nightly_one_stage.to_deployment(name="stage", parameters=params),
        promote_version.to_deployment(name="promote", parameters=params),
        rollback_deployment,
        canary_check.to_deployment(name="canary-check", parameters=params),
        online_eval_loop.to_deployment(
            name="online-eval", interval=settings.online_eval.interval_s, parameters=params
        ),
    ]
    if callable(getattr(load_domain(settings.domain), "bootstrap", None)):
        deployments.append(bootstrap_default.to_deployment(name="bootstrap", parameters=params))
    # ``to_deployment`` is sync here (no event loop), so each item is a RunnerDeployment.
    serve(*cast(list[RunnerDeployment], deployments))
