"""Registry-driven routing against a real MLflow server: alias moves under load, canary."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopwright.gateway.app import create_app
from loopwright.gateway.routing import canary_bucket, choose_arm
from loopwright.gateway.service import Gateway
from loopwright.gateway.settings import GatewaySettings
from tests.loopwright.gateway.gateway_helpers import LiveServer, spool_records


def _register_stub(tmp: Path, name: str, reply: str) -> str:
    """Register a version whose folder describes a stub model (real pyfunc logging)."""
    import mlflow

    from loopwright.registry import log_and_register

    folder = tmp / f"stub-{abs(hash(reply))}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stub.json").write_text(json.dumps({"reply": reply}))
    with mlflow.start_run():
        return log_and_register(folder, name, "policy").version


@pytest.fixture
def registry(mlflow_server, tmp_path) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(f"gateway-{tmp_path.name}")
    name = f"gw{abs(hash(str(tmp_path))) % 10**8}-policy"
    v1 = _register_stub(tmp_path, name, "v1 answers: {head}")
    v2 = _register_stub(tmp_path, name, "v2 answers: {head}")
    client = MlflowClient(mlflow_server)
    client.set_registered_model_alias(name, "champion", v1)
    return mlflow_server, client, name, v1, v2


def _settings(url: str, name: str, **routing: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(
        {
            "routing": {
                "source": "mlflow",
                "tracking_uri": url,
                "app": name.removesuffix("-policy"),
                "poll_interval_s": 0.25,
                **routing,
            },
            "backend": {"kind": "stub", "stub_delay_ms": 30},
            "rate_limit": {"enabled": False},
        }
    )


def test_alias_move_under_load_drops_nothing_and_switches(registry, tmp_path):
    url, client, name, v1, v2 = registry
    gw = Gateway(_settings(url, name), tmp_path / "run")
    _, key = gw.keys.create("acme")
    _, admin = gw.keys.create("acme", "admin")
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        with httpx.Client(
            base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            n = 0
            while not stop.is_set():
                n += 1
                sent = time.monotonic()
                r = http.post(
                    "/v1/chat/completions",
                    json={
                        "model": name,
                        "user": f"u{i}",
                        "messages": [{"role": "user", "content": f"question {i}-{n}"}],
                    },
                )
                body = r.json() if r.status_code == 200 else {}
                with lock:
                    results.append(
                        {
                            "status": r.status_code,
                            "sent": sent,
                            "done": time.monotonic(),
                            "fingerprint": body.get("system_fingerprint"),
                            "text": body["choices"][0]["message"]["content"] if body else r.text,
                        }
                    )

    with LiveServer(create_app(gw)) as server:
        old = gw.router.table.champion
        assert old is not None and old.version == v1
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        moved_at = time.monotonic()
        client.set_registered_model_alias(name, "champion", v2)
        switched_at = None
        routing_http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {admin}"}
        )
        while time.monotonic() - moved_at < 30:
            routing = routing_http.get("/v1/admin/routing").json()
            if routing["champion"]["version"] == v2:
                switched_at = time.monotonic()
                break
            time.sleep(0.05)
        assert switched_at is not None, "the gateway never picked up the alias move"
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        assert old.retired and old.inflight == 0 and old.backend.closed
    assert len(results) > 50
    assert [r for r in results if r["status"] != 200] == []  # zero failed requests
    for r in results:  # each answer came whole from the version it names
        version = r["fingerprint"].split("@")[1].split("/")[0]
        assert r["text"].startswith(f"v{1 if version == v1 else 2} answers:")
    before = [r for r in results if r["done"] < moved_at]
    after = [r for r in results if r["sent"] > switched_at]
    assert before and after
    assert {r["fingerprint"] for r in before} == {f"{name}@{v1}/champion"}
    assert {r["fingerprint"] for r in after} == {f"{name}@{v2}/champion"}
    logged = spool_records(tmp_path / "run")
    assert len(logged) == len(results)
    assert Counter(r["model_version"] for r in logged) == Counter(
        r["fingerprint"].split("@")[1].split("/")[0] for r in results
    )


def test_canary_fraction_from_the_registry_is_sticky_per_user(registry, tmp_path):
    url, client, name, v1, v2 = registry
    client.set_registered_model_alias(name, "canary", v2)
    client.set_registered_model_tag(name, "canary_fraction", "0.3")
    from fastapi.testclient import TestClient

    gw = Gateway(_settings(url, name, poll_interval_s=60), tmp_path / "run")
    with TestClient(create_app(gw)) as http:
        _, key = gw.keys.create("acme")
        arms: dict[str, set[str]] = {}
        for round_ in range(2):
            for u in range(40):
                r = http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": name,
                        "user": f"user-{u}",
                        "messages": [{"role": "user", "content": f"q{round_}"}],
                    },
                )
                arms.setdefault(f"user-{u}", set()).add(r.json()["system_fingerprint"])
        assert all(len(a) == 1 for a in arms.values())  # sticky
        canary_users = {u for u, a in arms.items() if f"{name}@{v2}/canary" in a}
        expected = {
            f"user-{u}" for u in range(40) if choose_arm(f"acme\x1fuser-{u}", 0.3, True) == "canary"
        }
        assert canary_users == expected and 4 <= len(canary_users) <= 20
        # The tag moves to 0: everyone back on champion at the next poll.
        client.set_registered_model_tag(name, "canary_fraction", "0")
        gw.poller.poll_once()
        r = http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": name,
                "user": sorted(canary_users)[0],
                "messages": [{"role": "user", "content": "again"}],
            },
        )
        assert r.json()["system_fingerprint"] == f"{name}@{v1}/champion"
    routes = Counter(rec["route"] for rec in spool_records(tmp_path / "run"))
    assert routes["canary"] == 2 * len(canary_users)


def test_canary_buckets_are_uniform_and_monotone():
    users = [f"t\x1fu{i}" for i in range(4000)]
    share = sum(canary_bucket(u) < 0.25 for u in users) / len(users)
    assert 0.22 < share < 0.28
    small = {u for u in users if choose_arm(u, 0.1, True) == "canary"}
    large = {u for u in users if choose_arm(u, 0.3, True) == "canary"}
    assert small <= large  # raising the fraction only moves users onto the canary
    assert not any(choose_arm(u, 0.9, False) == "canary" for u in users[:50])
