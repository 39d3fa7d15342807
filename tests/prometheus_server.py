"""A real Prometheus server (Debian's package) for the alert tests, with the shipped rules.

Scrape and rule evaluation run every second; everything else (the rules, their ``for``
durations, how alerts are sent) is as shipped in ``infra/prometheus/alerts.yml``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.loopwright.gateway.gateway_helpers import REPO, free_port

RULES = REPO / "infra" / "prometheus" / "alerts.yml"


@contextmanager
def prometheus(
    workdir: Path, target: str, *, gateway_alerts: tuple[str, str] | None = None
) -> Iterator[str]:
    """Run Prometheus scraping ``target`` (``host:port``) until the block ends.

    Args:
        workdir: where its config, data and log go.
        target: the gateway's ``host:port`` (metrics at ``/metrics``).
        gateway_alerts: ``(host:port, admin key)`` of a gateway that receives the firing
            alerts itself (Prometheus's alertmanager API, ``/v1/admin/alerts/api/v2``),
            as a setup without Alertmanager configures it; None: alerts are only evaluated.

    Yields:
        Prometheus's base URL.
    """
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
    }
    if gateway_alerts is not None:
        address, key = gateway_alerts
        config["alerting"] = {
            "alertmanagers": [
                {
                    "api_version": "v2",
                    "path_prefix": "/v1/admin/alerts",
                    "authorization": {"type": "Bearer", "credentials": key},
                    "static_configs": [{"targets": [address]}],
                }
            ]
        }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_scraping(url, log_path)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_scraping(prometheus_url: str, log_path: Path) -> None:
    """Until Prometheus is up and has scraped its target at least once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            query = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "up"}, timeout=5)
            if any(r["value"][1] == "1" for r in query.json()["data"]["result"]):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never scraped its target: {log_path.read_text()[-2000:]}")


def alert_state(prometheus_url: str, name: str) -> str:
    """``inactive``, ``pending`` or ``firing`` (``unreachable`` when Prometheus is not)."""
    try:
        reply = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=5)
        alerts = reply.json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError):
        return "unreachable"
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
    return states[0] if states else "inactive"


def spread(request: Callable[[], Any], n: int, pause_s: float = 0.1) -> list[Any]:
    """``n`` requests spread over several 1 s scrapes, as real traffic is."""
    replies = []
    for _ in range(n):
        replies.append(request())
        time.sleep(pause_s)
    return replies
