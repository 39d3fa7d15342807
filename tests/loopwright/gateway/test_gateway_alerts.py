"""A real Prometheus server scrapes a running gateway and fires the shipped alert on a spike.

The rules are ``infra/prometheus/alerts.yml`` as shipped; only the scrape and evaluation
intervals are short. The spike: the model's answers turn harmful, the output rail (a real
guard) blocks them, and ``LoopwrightHarmfulOutputSpike`` goes from inactive to firing.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loopwright.gateway.backends import Generation, StubBackend
from tests.loopwright.gateway.gateway_helpers import REPO, LiveServer, free_port

RULES = REPO / "infra" / "prometheus" / "alerts.yml"
HARMFUL_ANSWER = "Write a phishing email that steals my coworker's password."


class TurningStub(StubBackend):
    """The stub model, whose answers turn harmful when told to."""

    def __init__(self) -> None:
        super().__init__(name="helpdesk-policy", version="7")
        self.harmful = False

    async def generate(self, messages: Any, params: Any) -> Generation:
        out = await super().generate(messages, params)
        if self.harmful:
            out = dataclasses.replace(out, text=HARMFUL_ANSWER)
        return out


def _prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}"


def _wait_scraping(prometheus: str) -> None:
    """Until Prometheus is up and has scraped the gateway at least once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            query = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=5)
            if any(r["value"][1] == "1" for r in query.json()["data"]["result"]):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError("Prometheus never scraped the gateway")


def _spread(chat: Callable[[], dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` requests spread over several 1 s scrapes, as real traffic is."""
    replies = []
    for _ in range(n):
        replies.append(chat())
        time.sleep(0.1)
    return replies


def _alert_state(prometheus: str, name: str) -> str:
    try:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError):
        return "unreachable"
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
    return states[0] if states else "inactive"


# slow: ~50 s, most of it the rule's `for: 30s` (the default tier stays under 15 minutes).
@pytest.mark.slow
def test_a_harmful_output_spike_fires_the_shipped_alert(tmp_path, tiny_guard):
    from loopwright.gateway.app import create_app
    from loopwright.gateway.service import Gateway
    from loopwright.gateway.settings import GatewaySettings

    stub = TurningStub()
    settings = GatewaySettings.model_validate(
        {"augment": {"retrieval": False}, "rate_limit": {"enabled": False}}
    )
    gateway = Gateway(settings, tmp_path / "gw", guard=tiny_guard, static_backend=stub)
    _, key = gateway.keys.create("acme")
    name = "LoopwrightHarmfulOutputSpike"
    with LiveServer(create_app(gateway)) as server:
        process, prometheus = _prometheus(tmp_path, f"127.0.0.1:{server.port}")
        try:

            def chat() -> dict[str, Any]:
                body = {
                    "model": gateway.model_name,
                    "messages": [{"role": "user", "content": "How do I reset my password?"}],
                }
                headers = {"Authorization": f"Bearer {key}"}
                url = f"{server.url}/v1/chat/completions"
                return httpx.post(url, json=body, headers=headers, timeout=30).json()

            _wait_scraping(prometheus)
            healthy = _spread(chat, 25)
            assert {r["choices"][0]["finish_reason"] for r in healthy} == {"stop"}
            time.sleep(3)  # scraped and evaluated: ordinary traffic fires nothing
            assert _alert_state(prometheus, name) == "inactive"

            stub.harmful = True
            spiked = _spread(chat, 25)
            assert {r["choices"][0]["finish_reason"] for r in spiked} == {"content_filter"}
            states = []
            deadline = time.monotonic() + 120  # the rule's `for: 30s`, then evaluation
            while time.monotonic() < deadline:
                states.append(_alert_state(prometheus, name))
                if states[-1] == "firing":
                    break
                time.sleep(1)
            assert states[-1] == "firing", (
                states[-5:],
                (tmp_path / "prometheus.log").read_text()[-2000:],
            )
            assert "pending" in states  # it waited its `for` before firing
        finally:
            process.terminate()
            process.wait(timeout=30)
