"""The whole loop on the embedded default, as ``make demo`` runs it.

bootstrap v1 -> gateway serves it -> simulated production traffic -> nightly run ->
gate -> canary with live traffic -> canary analysis -> approval (automatic in the demo,
and recorded as such) -> champion v2 -> a poisoned night, stopped before training ->
rollback -> summary table per dimension. Prefect is used only through the flows.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.config import Settings

Echo = Callable[[str], None]


@dataclass
class DemoOutcome:
    """What the demo did, step by step, for the final summary."""

    steps: list[tuple[str, str]] = field(default_factory=list)
    table: list[tuple[str, float, float, float, float, float]] = field(default_factory=list)
    ok: bool = True

    def add(self, step: str, result: str, echo: Echo) -> None:
        """Record and print one step's result."""
        self.steps.append((step, result))
        echo(f"  -> {step}: {result}")


def gateway_key(settings: Settings, tenant: str = "acme") -> str:
    """A fresh user key for the simulated users (the plaintext is shown only once)."""
    from loopwright.gateway.keys import KeyStore

    store = KeyStore(settings.run_path / settings.gateway.auth.keys_file)
    _, secret = store.create(tenant=tenant, role="user", name="demo-users", requests_per_s=500)
    return secret


def drive_traffic(
    settings: Settings, key: str, *, requests: int, rps: float, seed: int, poisoned: bool = False
) -> Any:
    """Simulated users against the running gateway (loopback), with their feedback."""
    from loopwright.simulate import run_simulation

    return asyncio.run(
        run_simulation(
            f"http://{settings.gateway.host}:{settings.gateway.port}",
            key,
            rps=rps,
            minutes=max(1.0, requests / rps / 60 * 3),
            max_requests=requests,
            seed=seed,
            poisoned=poisoned,
            concurrency=32,
        )
    )


def wait_shipped(settings: Settings, timeout_s: float = 60.0) -> None:
    """Give the gateway's background shipper time to flush its spool to the store."""
    import time

    spool = settings.run_path / settings.gateway.log.spool_dir
    deadline = time.monotonic() + timeout_s
    # Open segments seal by age, sealed ones ship on the next tick: wait for both.
    while time.monotonic() < deadline:
        waiting = [*spool.glob("*/open/*.jsonl"), *spool.glob("*/sealed/*.jsonl")]
        if not any(p.stat().st_size for p in waiting):
            return
        time.sleep(1.0)


def summary_table(summary_path: Path) -> list[tuple[str, float, float, float, float, float]]:
    """(dimension, v1, v2, delta, ci_low, ci_high) from the release's paired evaluation."""
    data = json.loads(summary_path.read_text(encoding="utf-8"))
    view = data["views"]["raw"]
    rows = []
    for key, paired in sorted(view.get("paired", {}).items()):
        if "/" in key:
            continue
        v2 = view["values"][key]["value"]
        rows.append(
            (key, v2 - paired["delta"], v2, paired["delta"], paired["ci_low"], paired["ci_high"])
        )
    return rows


def background(target: Callable[[], Any]) -> threading.Thread:
    """Run ``target`` in a daemon thread (traffic during the canary window)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
