"""Alert intake: which alerts fire, and how the gateway's admin endpoints answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loopwright.gateway.alerts import AlertPayloadError, alert_event, firing_alerts

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _alert(name: str, *, status: str | None = None, ends: datetime | None = None) -> dict:
    alert = {
        "labels": {"alertname": name, "job": "gw", "response": "rollback"},
        "annotations": {"summary": f"{name} summary"},
        "startsAt": "2026-12-07T11:58:00Z",
    }
    if status is not None:
        alert["status"] = status
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    return alert


def test_alertmanager_and_prometheus_bodies_give_the_firing_alerts_only():
    webhook = {"alerts": [_alert("A", status="firing"), _alert("B", status="resolved")]}
    assert [a.name for a in firing_alerts(webhook, NOW)] == ["A"]
    direct = [
        _alert("A", ends=NOW + timedelta(minutes=4)),  # Prometheus: endsAt ahead = firing
        _alert("B", ends=NOW - timedelta(minutes=1)),  # resolved
    ]
    assert [a.name for a in firing_alerts(direct, NOW)] == ["A"]
    # The same firing (name, labels, start) has one key, whichever way it came.
    assert firing_alerts(webhook, NOW)[0].key == firing_alerts(direct, NOW)[0].key


def test_an_event_names_the_app_the_alert_and_the_response():
    alert = firing_alerts({"alerts": [_alert("Spike", status="firing")]}, NOW)[0]
    event = alert_event(alert, "shop", NOW)
    assert event["event"] == "loopwright.alert.firing"
    assert event["resource"]["prefect.resource.id"] == "loopwright.app.shop"
    assert event["resource"]["loopwright.response"] == "rollback"
    assert event["payload"]["summary"] == "Spike summary"
    assert alert_event(alert, "shop", NOW)["id"] == event["id"]  # a re-send is the same event


@pytest.mark.parametrize("body", [{"alerts": "x"}, [{"labels": "x"}], "text"])
def test_a_body_that_is_no_alert_list_is_refused(body):
    with pytest.raises(AlertPayloadError):
        firing_alerts(body, NOW)


def test_the_endpoints_need_an_admin_key_and_a_prefect_api(make_harness):
    h = make_harness()
    body = {"alerts": [_alert("A", status="firing")]}
    user = h.client.post(
        "/v1/admin/alerts", json=body, headers={"Authorization": f"Bearer {h.key()}"}
    )
    assert user.status_code == 403
    admin = {"Authorization": f"Bearer {h.key(role='admin')}"}
    unconfigured = h.client.post("/v1/admin/alerts", json=body, headers=admin)
    assert unconfigured.status_code == 503
    assert "alerts.prefect_api_url" in unconfigured.json()["error"]["message"]

    configured = make_harness({"alerts": {"prefect_api_url": "http://127.0.0.1:9/api"}}, "c")
    admin = {"Authorization": f"Bearer {configured.key(role='admin')}"}
    bad = configured.client.post("/v1/admin/alerts", json={"alerts": 3}, headers=admin)
    assert bad.status_code == 422
    # Prefect unreachable: 502, and nothing is recorded as sent (the re-send tries again).
    down = configured.client.post("/v1/admin/alerts/api/v2/alerts", json=body, headers=admin)
    assert down.status_code == 502
    assert not (configured.run_dir / "gateway" / "alerts_forwarded.jsonl").exists()
