"""Lifecycle of a whole stack on its own ports: up, status, up again, down, down again."""

import json
import shutil
import socket

import pytest
from stackenv import PORT_OFFSET, TEST_ROOT, _port, stack_env

from loopwright.config import load_settings
from loopwright.stack import PortInUse, Stack

pytestmark = pytest.mark.services

LIFECYCLE_ENV = {
    "LOOPWRIGHT_RUN_DIR": str(TEST_ROOT / f"lifecycle-{PORT_OFFSET}" / "run"),
    "LOOPWRIGHT_MLFLOW__HOME": str(TEST_ROOT / f"lifecycle-{PORT_OFFSET}" / "mlflow"),
    "LOOPWRIGHT_MLFLOW__PORT": _port(25050),
    "LOOPWRIGHT_PREFECT__PORT": _port(24200),
    "LOOPWRIGHT_OBJECT_STORE__S3_PORT": _port(21333),
    "LOOPWRIGHT_OBJECT_STORE__INTERNAL_PORT_BASE": _port(21340),
    "LOOPWRIGHT_RAY__PORT": _port(26380),
}


# slow: ~30 s; the default tier is at its 15-minute budget, and every test session's own
# stack goes up and down through the same Stack code.
@pytest.mark.slow
def test_lifecycle_up_status_up_again_down_down_again():
    shutil.rmtree(TEST_ROOT / f"lifecycle-{PORT_OFFSET}", ignore_errors=True)
    settings = load_settings("local", env=stack_env(LIFECYCLE_ENV))
    stack = Stack(settings)
    try:
        first = {s.name: s for s in stack.up()}
        assert set(first) == {"objectstore", "mlflow", "prefect", "ray"}
        assert all(s.health == "healthy" and s.pid for s in first.values()), first
        # Idle memory of the whole stack (the budget is 2 GiB).
        assert sum(s.rss_mb for s in first.values()) < 2048

        again = {s.name: s for s in stack.up()}
        assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in first.items()}

        # Everything the stack writes stays in its run directory and MLflow home.
        run = settings.run_path
        assert (run / "logs" / "mlflow.log").is_file()
        assert (run / "prefect").is_dir() and stack.ray_temp_dir.is_dir()
        assert (TEST_ROOT / f"lifecycle-{PORT_OFFSET}" / "mlflow" / "store" / "mlflow.db").is_file()
    finally:
        stack.down()
    assert all(s.health == "stopped" and s.pid is None for s in stack.status())
    stack.down()  # nothing running: still succeeds
    assert all(s.health == "stopped" for s in stack.status())


def test_stale_pid_file_is_detected_and_replaced():
    env = dict(LIFECYCLE_ENV, LOOPWRIGHT_MANAGED_SERVICES='["objectstore"]')
    env["LOOPWRIGHT_RUN_DIR"] = str(TEST_ROOT / f"stale-{PORT_OFFSET}" / "run")
    shutil.rmtree(TEST_ROOT / f"stale-{PORT_OFFSET}", ignore_errors=True)
    settings = load_settings("local", env=stack_env(env))
    stack = Stack(settings)
    pid_file = settings.run_path / "pids" / "objectstore.json"
    pid_file.parent.mkdir(parents=True)
    # A PID that exists (this test process) but started at another time: a reused PID.
    import os

    pid_file.write_text(json.dumps({"pid": os.getpid(), "create_time": 1.0}))
    assert [s.health for s in stack.status()] == ["stale"]
    try:
        statuses = stack.up()
        assert [s.health for s in statuses] == ["healthy"]
        assert statuses[0].pid != os.getpid()
    finally:
        stack.down()


def test_port_in_use_names_port_and_setting_and_starts_nothing():
    env = dict(LIFECYCLE_ENV, LOOPWRIGHT_MANAGED_SERVICES='["objectstore", "mlflow"]')
    env["LOOPWRIGHT_RUN_DIR"] = str(TEST_ROOT / f"busy-{PORT_OFFSET}" / "run")
    env["LOOPWRIGHT_OBJECT_STORE__ENDPOINT_URL"] = f"http://127.0.0.1:{_port(21333)}"
    env["LOOPWRIGHT_MLFLOW__PORT"] = _port(25061)
    settings = load_settings("local", env=stack_env(env))
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", settings.mlflow.port))
        blocker.listen()
        stack = Stack(settings)
        try:
            with pytest.raises(PortInUse) as err:
                stack.up()
            # The object store comes first and its port is free: it was not started either.
            assert all(s.health == "stopped" for s in stack.status())
        finally:
            stack.down()
    message = str(err.value)
    assert f"port {settings.mlflow.port}" in message
    assert "mlflow.port" in message and "LOOPWRIGHT_MLFLOW__PORT" in message
