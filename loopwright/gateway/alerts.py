"""Alert intake: firing Prometheus alerts become Prefect events that automations act on.

The gateway receives alerts on two admin endpoints (an admin key, as for every
``/v1/admin`` path):

- ``POST /v1/admin/alerts``: an Alertmanager webhook receiver (``{"alerts": [...]}``);
- ``POST /v1/admin/alerts/api/v2/alerts``: Prometheus itself, configured with this gateway
  as its "alertmanager" (``path_prefix: /v1/admin/alerts``), for a setup without one.

Each firing alert becomes one ``loopwright.alert.firing`` event on the Prefect server
(its REST events API; the gateway does not import Prefect), with the app as its resource
and the alert's labels and annotations as its payload. ``loopwright deploy`` creates the
automation that runs the rollback deployment on such an event when the alert is labelled
``response: rollback`` (:mod:`flows.deployments`). Prometheus and Alertmanager re-send a
firing alert every minute or so; an alert (name, labels, start) is forwarded once, and the
forwarded keys are kept in a file so a restarted gateway does not act twice. Each forwarded
alert also becomes a review item for the operators' tenant, saying what fired and what the
automation does about it, so a person looks at what was done on their behalf.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import Request  # at module level: FastAPI resolves the route's annotations here

if TYPE_CHECKING:
    from loopwright.gateway.review import ReviewQueue

ALERT_EVENT = "loopwright.alert.firing"


class AlertPayloadError(ValueError):
    """A body that is neither an Alertmanager webhook nor a Prometheus alert list."""


@dataclass(frozen=True)
class FiringAlert:
    """One firing alert.

    Attributes:
        name: ``alertname``.
        labels: every label (``severity``, ``response``, ``job`` ...).
        annotations: ``summary``, ``description`` ...
        starts_at: when it started firing (RFC 3339, as sent).
        key: stable identity of this firing (name, labels, start).
    """

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    key: str


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def firing_alerts(payload: Any, now: datetime) -> list[FiringAlert]:
    """The firing alerts of an Alertmanager webhook body or a Prometheus alert list.

    An alert with ``status`` (Alertmanager) fires when it says ``firing``; one without
    (Prometheus) fires while its ``endsAt`` is in the future.

    Raises:
        AlertPayloadError: not one of the two shapes.
    """
    alerts = payload.get("alerts") if isinstance(payload, Mapping) else payload
    if not isinstance(alerts, list):
        raise AlertPayloadError("expected an Alertmanager webhook body or a list of alerts")
    out = []
    for alert in alerts:
        if not isinstance(alert, Mapping) or not isinstance(alert.get("labels"), Mapping):
            raise AlertPayloadError("every alert needs a labels mapping")
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        status, ends = alert.get("status"), alert.get("endsAt")
        firing = status == "firing" if status else not ends or _time(str(ends)) > now
        if not firing or "alertname" not in labels:
            continue
        starts = str(alert.get("startsAt", ""))
        identity = json.dumps([sorted(labels.items()), starts])
        out.append(
            FiringAlert(
                name=labels["alertname"],
                labels=labels,
                annotations={str(k): str(v) for k, v in (alert.get("annotations") or {}).items()},
                starts_at=starts,
                key=hashlib.sha256(identity.encode()).hexdigest()[:32],
            )
        )
    return out


def alert_event(alert: FiringAlert, app: str, now: datetime) -> dict[str, Any]:
    """The Prefect event (REST shape) for one firing alert of ``app``'s gateway."""
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"loopwright-alert:{alert.key}")),
        "occurred": now.isoformat(),
        "event": ALERT_EVENT,
        "resource": {
            "prefect.resource.id": f"loopwright.app.{app}",
            "prefect.resource.name": app,
            "loopwright.alert": alert.name,
            "loopwright.response": alert.labels.get("response", "none"),
        },
        "related": [],
        "payload": {
            "alertname": alert.name,
            "labels": alert.labels,
            "annotations": alert.annotations,
            "starts_at": alert.starts_at,
            "summary": alert.annotations.get("summary", alert.name),
        },
    }


def review_note(alert: FiringAlert, app: str) -> dict[str, Any]:
    """The review item's payload for a forwarded alert: what fired, and what follows."""
    summary = alert.annotations.get("summary", alert.name)
    if alert.labels.get("response") == "rollback":
        action = (
            f"The automation '{app}: roll back on alert' runs the rollback deployment: "
            f"champion moves back to the previous version, with reason 'alert {alert.name}: "
            f"{summary}' in the audit history (`loopwright history`). Find out why the "
            "rolled-back version misbehaved before it is released again."
        )
    else:
        action = "Nothing is done automatically (response: none): a person decides."
    return {
        "kind": "alert",
        "alert": alert.name,
        "summary": summary,
        "description": alert.annotations.get("description", ""),
        "labels": alert.labels,
        "starts_at": alert.starts_at,
        "action": action,
    }


class AlertForwarder:
    """Forwards each firing alert once to the Prefect events API.

    Args:
        prefect_api_url: the Prefect API (``http://host:4200/api``).
        app: the gateway's app (the events' resource).
        state_file: JSON lines of the forwarded alert keys (created as needed).
        review: the review queue and tenant that get an item per forwarded alert.
    """

    def __init__(
        self,
        prefect_api_url: str,
        app: str,
        state_file: Path,
        review: tuple[ReviewQueue, str] | None = None,
    ) -> None:
        self.url = prefect_api_url.rstrip("/") + "/events"
        self.app = app
        self.state_file = state_file
        self.review = review
        self._lock = threading.Lock()
        self._sent: set[str] = set()
        if state_file.is_file():
            lines = state_file.read_text(encoding="utf-8").splitlines()
            self._sent = {json.loads(line)["key"] for line in lines if line.strip()}

    def forward(self, payload: Any, now: datetime | None = None) -> dict[str, int]:
        """Send the new firing alerts of ``payload``; returns the counts.

        Counts: ``received`` alerts, ``firing`` among them, ``forwarded`` now, and
        ``duplicates`` (forwarded before).

        Raises:
            AlertPayloadError: a malformed body.
            httpx.HTTPError: the Prefect server refused or could not be reached (nothing
                is recorded as sent, so the next re-send tries again).
        """
        now = now or datetime.now(UTC)
        received = payload.get("alerts") if isinstance(payload, Mapping) else payload
        firing = firing_alerts(payload, now)
        with self._lock:
            new = [a for a in firing if a.key not in self._sent]
            if new:
                events = [alert_event(a, self.app, now) for a in new]
                httpx.post(self.url, json=events, timeout=10).raise_for_status()
                self.state_file.parent.mkdir(parents=True, exist_ok=True)
                with self.state_file.open("a", encoding="utf-8") as fh:
                    for a in new:
                        fh.write(json.dumps({"key": a.key, "alert": a.name, "at": str(now)}))
                        fh.write("\n")
                self._sent.update(a.key for a in new)
        if self.review is not None:
            queue, tenant = self.review
            for a in new:
                reasons = [f"alert:{a.name}", f"response:{a.labels.get('response', 'none')}"]
                queue.enqueue(f"alert-{a.key}", tenant, reasons, review_note(a, self.app))
        return {
            "received": len(received) if isinstance(received, list) else 0,
            "firing": len(firing),
            "forwarded": len(new),
            "duplicates": len(firing) - len(new),
        }


def add_alert_routes(router: Any, forwarder: AlertForwarder | None) -> None:
    """Add the two alert endpoints to the gateway's ``/v1`` router (admin keys only).

    Answers: 200 with the counts; 422 for a malformed body; 502 when the Prefect server
    refuses or cannot be reached (the sender re-sends later); 503 when the gateway has no
    ``alerts.prefect_api_url``.
    """
    import anyio

    from loopwright.gateway.service import ApiError

    async def receive(request: Request) -> dict[str, int]:
        if forwarder is None:
            raise ApiError(
                503,
                "alerts are not forwarded: set the gateway's alerts.prefect_api_url "
                "(loopwright serve fills it from the main config)",
                kind="service_unavailable",
                reason="alerts:unconfigured",
            )
        try:
            body = await request.json()
            return await anyio.to_thread.run_sync(forwarder.forward, body)
        except (AlertPayloadError, ValueError) as exc:
            raise ApiError(422, f"alerts: {exc}", reason="validation:alerts") from exc
        except httpx.HTTPError as exc:
            raise ApiError(
                502, f"the Prefect events API: {exc}", kind="api_error", reason="alerts:prefect"
            ) from exc

    summary = "Firing alerts (Alertmanager webhook) become Prefect events"
    router.add_api_route("/admin/alerts", receive, methods=["POST"], summary=summary)
    router.add_api_route(
        "/admin/alerts/api/v2/alerts",
        receive,
        methods=["POST"],
        summary="Firing alerts sent by Prometheus itself (Alertmanager API v2 shape)",
    )
