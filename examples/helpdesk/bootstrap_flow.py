"""Bootstrap flow: the embedded default's data and v1 of policy, guard and reward."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from examples.helpdesk.bootstrap import BootstrapConfig
from examples.helpdesk.bootstrap_tasks import make_champion, prepare_data, train_and_publish
from loopwright.config import Settings
from loopwright.registry import RegisteredVersion


@flow(name="bootstrap", log_prints=True)
def bootstrap_flow(
    settings: Settings, repo: Path, config: BootstrapConfig, force: bool = False
) -> dict[str, RegisteredVersion]:
    """Generate and version the data, train and register each model, make v1 champion."""
    data = prepare_data(settings, repo, config)
    versions: dict[str, RegisteredVersion] = {}
    for kind in ("guard", "reward", "policy"):
        version = train_and_publish(settings, repo, kind, config, data, force)
        make_champion(settings, version, kind)
        versions[kind] = version
    return versions
