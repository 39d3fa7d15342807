"""Test tiers and the real local stack the service tests run against.

The session stack runs on its own ports and run directory (``.loopwright-test/``), so a
developer's `make demo` stack on the default ports is never touched, and it is stopped
when the session ends. Nothing here reads secrets from the machine: the object store's
credentials are generated for the test run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_ROOT = REPO / ".loopwright-test"

# Ports chosen so that neither the services nor their derived ports (SeaweedFS gRPC at
# +10000, Ray's worker range at +20..+219) overlap the default profile's. Two checkouts
# can run their tests at once with LWTEST_PORT_OFFSET (e.g. 1000) in one of them.
PORT_OFFSET = int(os.environ.get("LWTEST_PORT_OFFSET", "0"))


def _port(base: int) -> str:
    return str(base + PORT_OFFSET)


SESSION_ROOT = TEST_ROOT / f"session-{PORT_OFFSET}"
SESSION_STACK_ENV = {
    "LOOPWRIGHT_RUN_DIR": str(SESSION_ROOT / "run"),
    "LOOPWRIGHT_MLFLOW__HOME": str(SESSION_ROOT / "mlflow"),
    "LOOPWRIGHT_MLFLOW__PORT": _port(15050),
    "LOOPWRIGHT_PREFECT__PORT": _port(14200),
    "LOOPWRIGHT_OBJECT_STORE__S3_PORT": _port(17333),
    "LOOPWRIGHT_OBJECT_STORE__INTERNAL_PORT_BASE": _port(17340),
    "LOOPWRIGHT_RAY__PORT": _port(16380),
}


def stack_env(overrides: dict[str, str]) -> dict[str, str]:
    """The process environment without any LOOPWRIGHT_* from the machine, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWRIGHT_")}
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[object]:
    """A running local stack (object store, MLflow, Prefect, Ray) for the whole session."""
    from loopwright.client_env import client_env
    from loopwright.config import load_settings
    from loopwright.stack import Stack

    shutil.rmtree(SESSION_ROOT, ignore_errors=True)
    settings = load_settings("local", env=stack_env(SESSION_STACK_ENV))
    stack = Stack(settings)
    stack.up()
    saved = dict(os.environ)
    os.environ.update(client_env(settings))
    os.environ.pop("PREFECT_PROFILES_PATH", None)
    # Prefect caches its settings when first imported (perhaps before this fixture ran):
    # override them explicitly so flows talk to this stack's server, not an ephemeral one.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
            yield settings
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.down()


@pytest.fixture(scope="session")
def mlflow_server(stack_settings) -> str:
    """Tracking URI of the session stack's real MLflow server (SQLite store, S3 artifacts)."""
    return str(stack_settings.mlflow_tracking_uri)
