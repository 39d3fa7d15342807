"""Fixtures for the gateway tests: harnesses, a tiny real guard, real S3 and MLflow servers.

Every server is started by the fixture that needs it, on free loopback ports, with its
state under pytest's tmp dirs, and stopped after. Nothing here reads secrets from the
environment: the S3 credentials are generated per server.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from examples.helpdesk.generate import GENERATOR_VERSION
from tests.loopwright.gateway.gateway_helpers import (
    REPO,
    WeedServer,
    deep_merge,
    spool_records,
)

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- a tiny real guard (trained once, cached between sessions) -------------------------


def _tiny_guard_config() -> Any:
    from models.guard import GuardConfig

    return GuardConfig.tiny(export_onnx=False, threads=1)


# Named by the data generator's version and the recipe, so a change to either retrains it.
_RECIPE = hashlib.sha256(_tiny_guard_config().model_dump_json().encode()).hexdigest()[:8]
GUARD_CACHE = REPO / ".loopwright-test" / "gateway" / f"guard-tiny-g{GENERATOR_VERSION}-{_RECIPE}"


@pytest.fixture(scope="session")
def tiny_guard() -> Any:
    """A real guard (MiniLM, 1 trainable layer) trained on a small slice of the example
    domain; torch backend (the test venv cannot export ONNX)."""
    from examples.helpdesk import build_domain
    from models.guard import Guard, train_guard

    if not (GUARD_CACHE / "guard_config.json").exists():
        data = build_domain(seed=0, scale=0.06)
        train_guard(data.guard_train, _tiny_guard_config(), GUARD_CACHE)
    return Guard.load(GUARD_CACHE, backend="torch")


# -- harness around one gateway --------------------------------------------------------


@dataclass
class Harness:
    gw: Any
    client: Any
    run_dir: Path
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str = "acme", role: str = "user", **kw: Any) -> str:
        _, key = self.gw.keys.create(tenant, role, **kw)
        return key

    def chat(
        self, key: str | None, text: str = "How much is the Pro plan?", **body: Any
    ) -> httpx.Response:
        payload = {"model": self.gw.model_name, "messages": [{"role": "user", "content": text}]}
        payload.update(body)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.client.post("/v1/chat/completions", json=payload, headers=headers)

    def interactions(self) -> list[dict[str, Any]]:
        return spool_records(self.run_dir, "interactions")

    def feedback(self) -> list[dict[str, Any]]:
        return spool_records(self.run_dir, "feedback")


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from loopwright.gateway.app import create_app
    from loopwright.gateway.service import Gateway
    from loopwright.gateway.settings import GatewaySettings

    made: list[Any] = []

    def make(
        overrides: dict[str, Any] | None = None, name: str = "gw", **components: Any
    ) -> Harness:
        # The example's app: requests name helpdesk-policy, as the example's clients do.
        base = {"routing": {"app": "helpdesk"}}
        settings = GatewaySettings.model_validate(deep_merge(base, overrides or {}))
        run_dir = tmp_path / name
        gw = Gateway(settings, run_dir, **components)
        client = TestClient(create_app(gw))
        client.__enter__()
        made.append(client)
        return Harness(gw, client, run_dir)

    yield make
    for client in made:
        client.__exit__(None, None, None)


@pytest.fixture
def weed(tmp_path: Path) -> Iterator[WeedServer]:
    server = WeedServer(tmp_path / "weed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# The MLflow server comes from the session stack (``mlflow_server`` in tests/conftest.py),
# shared with the other registry tests.
