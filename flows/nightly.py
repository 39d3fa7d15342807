"""Nightly improvement flow: production log -> checked, versioned data -> reward -> candidate."""

from __future__ import annotations

from prefect import flow

from loopwright.config import Settings
from loopwright.datastore import data_version as current_data_version
from loopwright.nightly import BatchRejected, NightlyConfig, NightlyStage, stage_batch
from loopwright.registry import RegisteredVersion
from tasks.nightly import (
    check_batch,
    curate_batch,
    current_version,
    finetune,
    ingest_logs,
    reward_refresh,
    snapshot_data,
    untrained_batch,
)


@flow(name="nightly", log_prints=True)
def nightly_flow(settings: Settings, config: NightlyConfig) -> RegisteredVersion | None:
    """One night: ingest, validate + screen, curate, snapshot, refresh reward, fine-tune.

    Every stage finds its own earlier output, so a rerun after a crash resumes: an open
    batch is checked again, a committed one whose candidate is missing is trained, and a
    published reward model or candidate is found in the registry instead of retrained.

    Raises:
        BatchRejected: the batch failed its contracts or screening; nothing was trained.
    """
    batch = ingest_logs(settings)
    if batch is None:
        batch = untrained_batch(settings)
        if batch is None:
            print("no new production logs since the last run; nothing to do")
            return None
        print(f"batch {batch} was committed by an earlier run that died before its candidate")
    else:
        check = check_batch(settings, batch, config)
        if not check.passed:
            raise BatchRejected(f"batch {batch} rejected before training: {check.reasons}")
    curate_batch(settings, batch)
    data_version = snapshot_data(settings)
    reward_version = reward_refresh(settings, data_version, config)
    return finetune(settings, batch, data_version, reward_version, config)


@flow(name="nightly-stage", log_prints=True)
def nightly_stage_flow(settings: Settings, stage: NightlyStage, config: NightlyConfig) -> str:
    """One stage alone; its inputs are read from where the earlier stages left them.

    Returns:
        What the stage produced (a batch number, a data or model version, counts), as text.

    Raises:
        BatchRejected: the check stage rejected the batch (as the whole night would).
    """
    if stage == "ingest":
        return str(ingest_logs(settings))
    if stage == "snapshot":
        return snapshot_data(settings)
    version = current_data_version(settings.data_repo.resolve())
    if stage == "reward":
        if version is None:
            raise ValueError("no data snapshot yet; run the snapshot stage first")
        return reward_refresh(settings, version, config)
    batch = stage_batch(settings)
    if stage == "check":
        check = check_batch(settings, batch, config)
        if not check.passed:
            raise BatchRejected(f"batch {batch} rejected before training: {check.reasons}")
        return str(check)
    if stage == "curate":
        return str(curate_batch(settings, batch))
    if version is None:
        raise ValueError("fine-tuning needs a data snapshot; run the snapshot stage first")
    reward = current_version(settings, "reward") or "none"
    return finetune(settings, batch, version, reward, config).version
