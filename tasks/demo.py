"""Demo-only tasks: serve the gateway, drive simulated users, roll back, summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from loopwright import demo
from loopwright.config import Settings


@task(name="start-gateway")
def start_gateway(settings: Settings) -> str:
    """Start (or reuse) the gateway serving ``@champion``; returns a fresh user key.

    The gateway listens on ``settings.gateway.port`` and runs on exactly ``settings``
    (app, run directory, bucket, log sealing), passed to it as ``LOOPWRIGHT_*`` overrides.
    """
    url = demo.start_gateway(settings)
    get_run_logger().info("gateway at %s serving %s", url, settings.registered_model("policy"))
    return demo.gateway_key(settings)


@task(name="simulated-traffic")
def traffic(
    settings: Settings, key: str, requests: int, rps: float, seed: int, poisoned: bool = False
) -> dict[str, int]:
    """Simulated users (ordinary, adversarial, harmful) and their feedback, then flush logs."""
    report = demo.drive_traffic(
        settings, key, requests=requests, rps=rps, seed=seed, poisoned=poisoned
    )
    demo.wait_shipped(settings)
    counts = demo.traffic_counts([report])
    get_run_logger().info("traffic: %s", counts)
    return counts


@task(name="rollback")
def rollback(settings: Settings, reason: str) -> str:
    """One-command rollback: champion back to ``previous`` (audited)."""
    from mlflow import MlflowClient

    from loopwright.release.registry_ops import RegistryOps

    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    result = ops.rollback(
        settings.registered_model("policy"), actor="loopwright:demo", reason=reason
    )
    return (result.moves[0].to_version or "none") if result.moves else "unchanged"


@task(name="gateway-follows")
def gateway_follows(settings: Settings, key: str, version: str) -> float | None:
    """Seconds until the running gateway answers with ``version`` as champion (None: never)."""
    return demo.seconds_until_served(settings, key, version)


@task(name="version-tags")
def version_tags(settings: Settings, version: str) -> dict[str, str]:
    """The policy version's registry tags (gate verdict, canary verdict, approval)."""
    from mlflow import MlflowClient

    tags: dict[str, Any] = (
        MlflowClient().get_model_version(settings.registered_model("policy"), version).tags
    )
    return {str(k): str(v) for k, v in tags.items()}


@task(name="demo-summary")
def summary_table(
    settings: Settings, candidate: str, gate_policy: Path | None, tags: dict[str, str]
) -> list[demo.SummaryRow]:
    """Per gated dimension: v1, v2, delta with its paired CI, the rule, the gate's verdict."""
    path = demo.gate_summary_path(settings, candidate)
    if path is None:
        get_run_logger().warning("no evaluation summary for version %s", candidate)
        return []
    blocking = {k: True for k in tags.get("gate.blocking_dimensions", "").split(",") if k}
    return demo.summary_table(path, gate_policy, blocking if "gate.passed" in tags else None)


@task(name="data-fingerprint")
def data_fingerprint(settings: Settings) -> dict[str, str]:
    """The DVC data version and a digest of the curated files (to show they did not move)."""
    return demo.data_fingerprint(settings)
