"""A tiny bootstrapped registry + DVC repo shared by the flow tests (built once)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Bootstrapped:
    settings: Any
    repo: Path
    versions: dict[str, Any]
    config: Any


def make_dvc_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "-q"], cwd=path, check=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def own_app_settings(base: Any, app: str, bucket: str, repo: Path) -> Any:
    """The session stack's settings for an app of a test's own.

    Its own data repository, and its own bucket (created here) that its gateway, on a free
    port, ships to: other flow tests ingest from the session's default bucket. A gateway
    left running in the shared run directory (it would serve another app) is stopped.
    """
    from loopwright.demo import stop_gateway
    from loopwright.storage import ObjectStore

    gateway = base.gateway.model_copy(
        update={
            "port": free_port(),
            "log": base.gateway.log.model_copy(update={"store_uri": f"s3://{bucket}"}),
        }
    )
    settings = base.model_copy(
        update={
            "app": app,
            "data_repo": repo,
            "object_store": base.object_store.model_copy(update={"bucket": bucket}),
            "gateway": gateway,
        }
    )
    ObjectStore.from_settings(settings).ensure_bucket(f"s3://{bucket}/")
    stop_gateway(settings)
    return settings


@pytest.fixture(scope="session")
def bootstrapped(stack_settings, tmp_path_factory) -> Bootstrapped:
    from examples.helpdesk.bootstrap import BootstrapConfig
    from examples.helpdesk.bootstrap_flow import bootstrap_flow

    repo = make_dvc_repo(tmp_path_factory.mktemp("flows") / "repo")
    settings = stack_settings.model_copy(update={"app": "boot", "data_repo": repo})
    config = BootstrapConfig(tiny=True, scale=0.05)
    versions = bootstrap_flow(settings, repo, config)
    return Bootstrapped(settings, repo, versions, config)


@pytest.fixture(scope="session")
def nightly_candidate(bootstrapped) -> Any:
    """The first night on simulated production logs: a registered candidate version."""
    from data_sim import T0, simulate

    from flows.nightly import nightly_flow
    from loopwright.data.logs import write_log_partition
    from loopwright.nightly import NightlyConfig
    from loopwright.storage import ObjectStore

    settings = bootstrapped.settings
    traffic = simulate(300, seed=1, id_prefix="n1")
    write_log_partition(
        ObjectStore.from_settings(settings),
        f"s3://{settings.object_store.bucket}",
        [*traffic.interactions, *traffic.feedback],
        T0,
        spool="night1",
    )
    return nightly_flow(settings, NightlyConfig(tiny=True))
