"""Traffic simulator: a domain's simulated users talk to a running gateway over HTTP.

Each simulated user (ordinary, adversarial, harmful; :class:`examples.helpdesk.simulators.
UserSimulator`) sends a chat request; the user judges the answer and the feedback it leaves
(ratings, corrections) is posted to ``/v1/feedback`` under the interaction id the gateway
returned. The run is bounded in requests and time and only talks to loopback addresses,
so it can never load someone else's service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlparse

import httpx
import typer

from loopwright.progress import report as report_progress

logger = logging.getLogger(__name__)

MAX_RPS = 500.0
MAX_MINUTES = 120.0


class SimulationError(ValueError):
    """The simulation was asked for something it refuses (a non-loopback URL, bad bounds)."""


@dataclass
class SimulationReport:
    """Counts of one simulation run.

    Attributes:
        sent: chat requests sent.
        ok: chat requests answered 200.
        errors: chat requests that failed (transport error or status >= 400).
        by_status: chat answers by HTTP status (``"error"`` for transport failures).
        blocked: answers with ``finish_reason == "content_filter"``.
        feedback_sent / feedback_ok: feedback posts and those answered 200.
        by_user_kind: requests per simulated user kind.
        seconds: wall time of the run.

    """

    sent: int = 0
    ok: int = 0
    errors: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    blocked: int = 0
    feedback_sent: int = 0
    feedback_ok: int = 0
    by_user_kind: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    interaction_ids: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (without the id list)."""
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "by_status": dict(sorted(self.by_status.items())),
            "blocked": self.blocked,
            "feedback_sent": self.feedback_sent,
            "feedback_ok": self.feedback_ok,
            "by_user_kind": dict(sorted(self.by_user_kind.items())),
            "seconds": round(self.seconds, 2),
        }


def check_loopback(base_url: str) -> None:
    """Refuse any URL whose host is not a loopback address.

    Raises:
        SimulationError: the host is not ``localhost`` or a loopback IP.

    """
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SimulationError(
        f"refusing to simulate traffic against {base_url!r}: only loopback hosts "
        "(127.0.0.1, ::1, localhost) are allowed"
    )


async def run_simulation(
    base_url: str,
    api_key: str,
    *,
    domain: str,
    rps: float,
    minutes: float,
    max_requests: int | None = None,
    seed: int = 0,
    revision: int = 2,
    noise: float = 0.05,
    mix: Mapping[str, float] | None = None,
    poisoned: bool = False,
    concurrency: int = 16,
    model: str | None = None,
    feedback: bool = True,
    timeout_s: float = 30.0,
) -> SimulationReport:
    """Drive the gateway at ``rps`` requests/second for ``minutes`` (open loop).

    Requests are started on a fixed schedule (at most ``concurrency`` in flight; a slow
    gateway makes the schedule slip rather than pile up). The run stops after
    ``rps * minutes * 60`` requests or ``max_requests``, whichever is smaller, or when the
    time is up; requests in flight are awaited.

    Args:
        base_url: gateway root, e.g. ``http://127.0.0.1:8400`` (loopback only).
        api_key: a user key of the gateway.
        domain: the served domain (``Settings.domain``); its ``user_simulator()`` hook
            makes the users (a domain without one cannot be simulated).
        rps: target requests per second, in (0, 500].
        minutes: duration bound, in (0, 120].
        max_requests: an extra bound on the request count.
        seed: simulator seed (same seed, same request sequence).
        revision: KB revision the simulated users judge against.
        noise: probability that a rating is flipped.
        mix: weights over ``ordinary``, ``adversarial``, ``harmful`` users.
        poisoned: users reward bad answers (for testing the nightly screening).
        concurrency: most requests in flight.
        model: model id to ask for (default: the first of ``GET /v1/models``).
        feedback: post the users' feedback.
        timeout_s: per-request timeout.

    Raises:
        SimulationError: a non-loopback URL, out-of-range bounds, or a domain without
            simulated users.

    """
    from loopwright.domain import DomainError, domain_hook

    check_loopback(base_url)
    try:
        make_users = domain_hook(domain, "user_simulator", "simulated traffic")
    except DomainError as exc:
        raise SimulationError(f"{exc}; send your own traffic through the gateway") from None
    if not 0 < rps <= MAX_RPS:
        raise SimulationError(f"rps must be in (0, {MAX_RPS}], got {rps}")
    if not 0 < minutes <= MAX_MINUTES:
        raise SimulationError(f"minutes must be in (0, {MAX_MINUTES}], got {minutes}")
    if max_requests is not None and max_requests < 1:
        raise SimulationError(f"max_requests must be >= 1, got {max_requests}")
    total = int(rps * minutes * 60)
    if max_requests is not None:
        total = min(total, max_requests)
    users = make_users(revision=revision, noise=noise, seed=seed, mix=mix, poisoned=poisoned)
    report = SimulationReport()
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    deadline = start + minutes * 60
    gate = asyncio.Semaphore(concurrency)
    finished = 0
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, limits=limits
    ) as client:
        if model is None:
            listed = await client.get("/v1/models")
            listed.raise_for_status()
            model = listed.json()["data"][0]["id"]

        async def one(request: Any) -> None:
            nonlocal finished
            try:
                report.by_user_kind[request.user_kind] += 1
                try:
                    r = await client.post(
                        "/v1/chat/completions",
                        json={"model": model, "messages": request.messages, "user": request.user},
                    )
                except httpx.HTTPError as exc:
                    report.errors += 1
                    report.by_status["error"] += 1
                    logger.warning("request %s failed: %s", request.id, exc)
                    return
                report.by_status[str(r.status_code)] += 1
                if r.status_code != 200:
                    report.errors += 1
                    return
                report.ok += 1
                body = r.json()
                report.interaction_ids.append(body["id"])
                choice = body["choices"][0]
                if choice["finish_reason"] == "content_filter":
                    report.blocked += 1
                if not feedback:
                    return
                for event in users.judge(
                    request, choice["message"]["content"], interaction_id=body["id"]
                ):
                    report.feedback_sent += 1
                    try:
                        fb = await client.post(
                            "/v1/feedback",
                            json={
                                "interaction_id": body["id"],
                                "kind": event.kind,
                                "value": event.value,
                                "user": request.user,
                            },
                        )
                        report.feedback_ok += int(fb.status_code == 200)
                    except httpx.HTTPError as exc:
                        logger.warning("feedback for %s failed: %s", body["id"], exc)
            finally:
                gate.release()
                finished += 1
                report_progress("requests", finished, total)

        tasks: list[asyncio.Task[None]] = []
        for i in range(total):
            due = start + i / rps
            now = time.perf_counter()
            if due > deadline or now > deadline:
                break
            if due > now:
                await asyncio.sleep(due - now)
            await gate.acquire()
            report.sent += 1
            tasks.append(asyncio.create_task(one(users.next_request())))
        await asyncio.gather(*tasks)
    report.seconds = time.perf_counter() - start
    return report


def _configured(ctx: typer.Context | None) -> Any:
    """The main CLI's settings when ``simulate`` runs under ``loopwright``, else None."""
    return ctx.find_root().obj if ctx is not None else None


def _simulation_key(main: Any) -> str:
    """A fresh user key for simulated traffic in the key store the gateway serves from."""
    from loopwright.gateway.keys import KeyStore

    store = KeyStore(main.run_path / main.gateway.auth.keys_file)
    try:
        info, key = store.create("simulated", "user", "loopwright-simulate")
    finally:
        store.close()
    typer.echo(f"no --api-key: created user key {info.key_id} (tenant simulated)", err=True)
    return key


def _domain(main: Any) -> str:
    """The configured domain: the main CLI's, else the default profile's."""
    if main is not None:
        return str(main.domain)
    from loopwright.config import load_settings

    return load_settings().domain


def simulate(
    ctx: typer.Context,
    rps: Annotated[float, typer.Option(help="Requests per second")] = 2.0,
    minutes: Annotated[float, typer.Option(help="How long to run")] = 1.0,
    url: Annotated[
        str | None,
        typer.Option(help="Gateway URL (loopback only; default the configured gateway)"),
    ] = None,
    api_key: Annotated[
        str,
        typer.Option(
            envvar="LOOPWRIGHT_API_KEY",
            help="A user key of the gateway (under loopwright, default: a new one)",
        ),
    ] = "",
    max_requests: Annotated[int | None, typer.Option(help="Stop after this many")] = None,
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 0,
    revision: Annotated[int, typer.Option(help="KB revision users judge against")] = 2,
    noise: Annotated[float, typer.Option(help="Probability a rating is flipped")] = 0.05,
    poisoned: Annotated[bool, typer.Option(help="Users reward bad answers")] = False,
    concurrency: Annotated[int, typer.Option(help="Most requests in flight")] = 16,
) -> None:
    """Send simulated users' traffic and feedback to a running gateway; print the counts.

    Under ``loopwright`` the gateway URL and key store come from the configuration, and
    without ``--api-key`` a user key for tenant ``simulated`` is created (and said so).
    """
    import json

    main = _configured(ctx)
    gateway = getattr(main, "gateway", None)
    if url is None:
        url = f"http://{gateway.host}:{gateway.port}" if gateway else "http://127.0.0.1:8400"
    if not api_key and gateway is not None:
        api_key = _simulation_key(main)
    if not api_key:
        raise typer.BadParameter(
            "an API key is needed (--api-key or LOOPWRIGHT_API_KEY); "
            "create one with `loopwright keys create --tenant ...`"
        )
    try:
        report = asyncio.run(
            run_simulation(
                url,
                api_key,
                domain=_domain(main),
                rps=rps,
                minutes=minutes,
                max_requests=max_requests,
                seed=seed,
                revision=revision,
                noise=noise,
                poisoned=poisoned,
                concurrency=concurrency,
            )
        )
    except SimulationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(report.summary(), indent=2))
