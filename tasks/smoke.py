"""Smoke tasks: one round trip per service."""

from __future__ import annotations

from prefect import task

from loopwright import smoke
from loopwright.config import Settings
from loopwright.storage import ObjectStore


@task(name="smoke-object-store", retries=2, retry_delay_seconds=1)
def object_store_check(settings: Settings) -> smoke.Check:
    """S3 put/get/list/delete against the configured store."""
    return smoke.object_store_round_trip(
        ObjectStore.from_settings(settings), settings.object_store.bucket
    )


@task(name="smoke-mlflow", retries=2, retry_delay_seconds=1)
def mlflow_check(settings: Settings) -> smoke.Check:
    """Run, model version and alias round trip in the MLflow registry."""
    return smoke.mlflow_registry_round_trip(settings.app)


@task(name="smoke-ray", retries=1, retry_delay_seconds=1)
def ray_check(settings: Settings) -> smoke.Check:
    """One remote task on the Ray cluster."""
    return smoke.ray_round_trip(settings.ray_address)
