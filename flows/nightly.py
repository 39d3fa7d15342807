"""Nightly improvement flow: production log -> checked, versioned data -> reward -> candidate."""

from __future__ import annotations

from prefect import flow

from loopwright.config import Settings
from loopwright.nightly import BatchRejected, NightlyConfig
from loopwright.registry import RegisteredVersion
from tasks.nightly import (
    check_batch,
    curate_batch,
    finetune,
    ingest_logs,
    reward_refresh,
    snapshot_data,
)


@flow(name="nightly", log_prints=True)
def nightly_flow(settings: Settings, config: NightlyConfig) -> RegisteredVersion | None:
    """One night: ingest, validate + screen, curate, snapshot, refresh reward, fine-tune.

    Raises:
        BatchRejected: the batch failed its contracts or screening; nothing was trained.
    """
    batch = ingest_logs(settings)
    if batch is None:
        print("no new production logs since the last run; nothing to do")
        return None
    check = check_batch(settings, batch, config)
    if not check.passed:
        raise BatchRejected(f"batch {batch} rejected before training: {check.reasons}")
    curate_batch(settings, batch)
    data_version = snapshot_data(settings)
    reward_version = reward_refresh(settings, data_version, config)
    return finetune(settings, data_version, reward_version, config)
