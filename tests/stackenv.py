"""Ports and folders of the test stacks (imported by conftest and the stack tests)."""

from __future__ import annotations

import os
from pathlib import Path

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
