"""A firing alert that asks for a rollback schedules the rollback deployment, once.

Real Prefect server (the session stack) and its automation engine; the alert enters through
the gateway's admin endpoint, as Alertmanager (or Prometheus) would send it. Each alert also
becomes a review item for the operators. The rollback run itself is left scheduled:
executing it needs a process serving the deployments (``loopwright deploy``); the deployed
release test runs the whole chain from a real Prometheus to the gateway serving the
previous champion.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.services

APP = "alerttest"


def _alert(name: str, response: str, summary: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": name, "job": "gateway", "severity": "page", "response": response},
        "annotations": {"summary": summary},
        "startsAt": "2026-12-07T11:58:00Z",
    }


def _runs(deployment_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def test_a_rollback_alert_schedules_the_rollback_with_the_alert_as_reason(stack_settings, tmp_path):
    from fastapi.testclient import TestClient
    from prefect.automations import Automation

    from flows.deployments import ensure_rollback_automation, rollback_champion
    from loopwright.client_env import apply_client_env
    from loopwright.gateway.app import create_app
    from loopwright.gateway.service import Gateway
    from loopwright.gateway.settings import GatewaySettings

    settings = stack_settings.model_copy(update={"app": APP})
    apply_client_env(settings)
    deployment = rollback_champion.to_deployment(
        name=f"rollback-{uuid.uuid4().hex[:8]}", parameters={"profile": "local"}
    )
    deployment_id = deployment.apply()
    ensure_rollback_automation(settings, deployment_id)
    automation_id = ensure_rollback_automation(settings, deployment_id)  # replaces, not adds
    assert Automation.read(name=f"{APP}: roll back on alert").id == automation_id
    try:
        gateway = Gateway(
            GatewaySettings.model_validate(
                {"routing": {"app": APP}, "alerts": {"prefect_api_url": settings.prefect_api_url}}
            ),
            tmp_path / "gw",
        )
        _, admin = gateway.keys.create("ops", "admin")
        body = {
            "alerts": [
                _alert("LoopwrightHarmfulOutputSpike", "rollback", "9% of answers blocked"),
                _alert("LoopwrightInputBlockSpike", "none", "40% of requests blocked"),
            ]
        }
        with TestClient(create_app(gateway)) as client:
            headers = {"Authorization": f"Bearer {admin}"}
            first = client.post("/v1/admin/alerts", json=body, headers=headers).json()
            again = client.post("/v1/admin/alerts", json=body, headers=headers).json()
            # A person is told: one review item per alert, for the operators' tenant only.
            items = {i.reasons[0]: i for i in gateway.review.list("ops", "pending")}
            assert set(items) == {
                "alert:LoopwrightHarmfulOutputSpike",
                "alert:LoopwrightInputBlockSpike",
            }
            rollback_note = items["alert:LoopwrightHarmfulOutputSpike"].payload
            assert rollback_note["summary"] == "9% of answers blocked"
            assert "rollback deployment" in rollback_note["action"]
            assert "a person decides" in items["alert:LoopwrightInputBlockSpike"].payload["action"]
            assert gateway.review.list("acme", "pending") == []
        assert first == {"received": 2, "firing": 2, "forwarded": 2, "duplicates": 0}
        assert again == {"received": 2, "firing": 2, "forwarded": 0, "duplicates": 2}

        deadline = time.monotonic() + 90
        while not (runs := _runs(deployment_id)) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(runs) == 1, "the automation did not schedule the rollback"
        assert runs[0].parameters["reason"] == (
            "alert LoopwrightHarmfulOutputSpike: 9% of answers blocked"
        )
        time.sleep(3)  # the response-none alert and the re-send schedule nothing more
        assert len(_runs(deployment_id)) == 1
    finally:
        Automation.read(id=automation_id).delete()
