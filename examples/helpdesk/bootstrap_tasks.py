"""Bootstrap tasks: example data, DVC snapshot, train-and-publish each v1 model, champion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task

from examples.helpdesk import bootstrap
from loopwright.config import Settings
from loopwright.datastore import snapshot
from loopwright.publish import find_version, publish_model
from loopwright.register import check_model_folder
from loopwright.registry import ModelKind, RegisteredVersion

TRAINERS = {
    "policy": bootstrap.train_policy,
    "guard": bootstrap.train_guard,
    "reward": bootstrap.train_reward,
}


@task(name="bootstrap-data", retries=1, retry_delay_seconds=2)
def prepare_data(
    settings: Settings, repo: Path, config: bootstrap.BootstrapConfig
) -> tuple[str, str]:
    """Write the example data under ``data/`` and snapshot it with DVC.

    Returns:
        ``(data_version, example_hash)``: the DVC hash of all of ``data/`` (lineage) and
        the content hash of the example data alone (identity: later nights add their own
        data to ``data/`` without making v1 a different model).
    """
    counts = bootstrap.write_example_data(repo / "data", config)
    get_run_logger().info("example data: %s", counts)
    manifest = json.loads((repo / "data" / bootstrap.DOMAIN_DIR / "manifest.json").read_text())
    return snapshot(repo, settings, "data"), str(manifest["content_hash"])


# log_prints=False: Prefect's print capture also swallows what dill prints to its own
# captured stdout to find a function's globals (datasets/trl hash their map functions that
# way), so under log_prints the hashes went wrong and the log filled with bytecode listings.
@task(name="bootstrap-train", log_prints=False)
def train_and_publish(
    settings: Settings,
    repo: Path,
    kind: Literal["policy", "guard", "reward"],
    config: bootstrap.BootstrapConfig,
    data: tuple[str, str],
    force: bool = False,
) -> RegisteredVersion:
    """Train one v1 model and register it, unless this exact one is registered already."""
    log = get_run_logger()
    data_version, example_hash = data
    identity = {
        "origin": "bootstrap",
        "example_data": example_hash[:16],
        "seed": str(config.seed),
        "scale": str(config.scale),
        "tiny": str(config.tiny).lower(),
        "parent_version": "none",
    }
    lineage = {**identity, "data_version": data_version}
    existing = find_version(settings.registered_model(kind), identity)
    if existing is not None and not force:
        log.info("%s v1 already registered as version %s", kind, existing.version)
        return existing
    out_dir = settings.run_path / "models" / kind / f"bootstrap-{data_version[:8]}"
    start = time.perf_counter()
    metrics = TRAINERS[kind](repo / "data", config, out_dir)
    metrics["stage_seconds"] = time.perf_counter() - start
    # The check `loopwright register` makes: the folder loads and answers as the loop will
    # use it (the registration itself keeps the training run's metrics and lineage).
    log.info("%s v1 loaded: %s", kind, check_model_folder(out_dir, kind))
    return publish_model(
        settings,
        out_dir,
        kind,
        experiment=f"{settings.app}-bootstrap",
        run_name=f"{kind}-v1",
        params=config.model_dump() | {"kind": kind},
        metrics=metrics,
        lineage=lineage,
    )


@task(name="bootstrap-champion", retries=2, retry_delay_seconds=2)
def make_champion(settings: Settings, version: RegisteredVersion, kind: ModelKind) -> str:
    """Give v1 the ``champion`` alias through the audited promotion path (first run only)."""
    from datetime import UTC, datetime

    from mlflow import MlflowClient

    from loopwright.release.approval import ApprovalDecision
    from loopwright.release.registry_ops import RegistryOps

    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    current = ops.state(version.name).alias("champion")
    if current is not None:
        return current
    approval = ApprovalDecision(
        approved=True,
        by="loopwright:bootstrap",
        at=datetime.now(UTC),
        reason=f"first {kind} version of the embedded default (no champion to compare with)",
        channel="auto",
    )
    ops.promote(
        version.name,
        version.version,
        approval,
        expected_champion=None,
        request_id=f"bootstrap-{version.name}-{version.version}",
    )
    return version.version
