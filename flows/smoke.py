"""Smoke flow: proves the stack is wired (object store, MLflow registry, Ray) via Prefect."""

from __future__ import annotations

from prefect import flow

from loopwright.config import Settings
from loopwright.smoke import Check
from tasks.smoke import mlflow_check, object_store_check, ray_check


@flow(name="smoke", log_prints=True)
def smoke_flow(settings: Settings) -> list[Check]:
    """Run every round trip; the flow run itself is the Prefect round trip."""
    return [object_store_check(settings), mlflow_check(settings), ray_check(settings)]
