"""A real Prometheus server scrapes a running gateway and fires the shipped alert on a spike.

The rules are ``infra/prometheus/alerts.yml`` as shipped; only the scrape and evaluation
intervals are short. The spike: the model's answers turn harmful, the output rail (a real
guard) blocks them, and ``LoopwrightHarmfulOutputSpike`` goes from inactive to firing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import httpx
import pytest

from loopwright.gateway.backends import Generation, StubBackend
from tests.loopwright.gateway.gateway_helpers import LiveServer
from tests.prometheus_server import alert_state, prometheus, spread

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
    with (
        LiveServer(create_app(gateway)) as server,
        prometheus(tmp_path, f"127.0.0.1:{server.port}") as prometheus_url,
    ):

        def chat() -> dict[str, Any]:
            body = {
                "model": gateway.model_name,
                "messages": [{"role": "user", "content": "How do I reset my password?"}],
            }
            headers = {"Authorization": f"Bearer {key}"}
            url = f"{server.url}/v1/chat/completions"
            return httpx.post(url, json=body, headers=headers, timeout=30).json()

        healthy = spread(chat, 25)
        assert {r["choices"][0]["finish_reason"] for r in healthy} == {"stop"}
        time.sleep(3)  # scraped and evaluated: ordinary traffic fires nothing
        assert alert_state(prometheus_url, name) == "inactive"

        stub.harmful = True
        spiked = spread(chat, 25)
        assert {r["choices"][0]["finish_reason"] for r in spiked} == {"content_filter"}
        states = []
        deadline = time.monotonic() + 120  # the rule's `for: 30s`, then evaluation
        while time.monotonic() < deadline:
            states.append(alert_state(prometheus_url, name))
            if states[-1] == "firing":
                break
            time.sleep(1)
        assert states[-1] == "firing", (
            states[-5:],
            (tmp_path / "prometheus.log").read_text()[-2000:],
        )
        assert "pending" in states  # it waited its `for` before firing
