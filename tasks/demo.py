"""Demo-only tasks: serve the gateway, drive simulated users, roll back."""

from __future__ import annotations

from prefect import get_run_logger, task

from loopwright import demo
from loopwright.config import Settings
from loopwright.stack import Stack


@task(name="start-gateway")
def start_gateway(settings: Settings) -> str:
    """Start (or reuse) the gateway serving ``@champion``; returns a fresh user key."""
    Stack(settings, with_gateway=True).up(services=["gateway"])
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
    counts = {
        "sent": report.sent,
        "ok": report.ok,
        "errors": report.errors,
        "blocked": report.blocked,
        "feedback": report.feedback_ok,
    }
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
