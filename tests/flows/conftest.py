"""A tiny bootstrapped registry + DVC repo shared by the flow tests (built once)."""

from __future__ import annotations

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
