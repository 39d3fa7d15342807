"""`loopwright keys ...`, the serve settings resolution, and `loopwright simulate`."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import typer
from typer.testing import CliRunner

from loopwright.gateway.app import create_app
from loopwright.gateway.cli import keys_app, resolve_settings
from loopwright.gateway.keys import KeyStore
from loopwright.gateway.service import Gateway
from loopwright.gateway.settings import GatewaySettings
from loopwright.simulate import SimulationError, check_loopback, run_simulation, simulate
from tests.loopwright.gateway.gateway_helpers import LiveServer, spool_records

EXAMPLE = "examples.helpdesk.plugin:domain"  # the domain with simulated users


def test_keys_create_list_revoke(tmp_path):
    runner = CliRunner()
    run_dir = ["--run-dir", str(tmp_path)]
    made = runner.invoke(
        keys_app, ["create", "--tenant", "acme", "--role", "reviewer", "--name", "alice", *run_dir]
    )
    assert made.exit_code == 0, made.output
    key = next(
        line.split(": ", 1)[1] for line in made.output.splitlines() if line.startswith("key: ")
    )
    store = KeyStore(tmp_path / "gateway" / "keys.sqlite")
    principal = store.verify(key)
    assert principal is not None and principal.role == "reviewer"
    listed = runner.invoke(keys_app, ["list", *run_dir])
    assert principal.key_id in listed.output and "alice" in listed.output
    assert key.split("_", 2)[2] not in listed.output
    bad = runner.invoke(keys_app, ["create", "--tenant", "acme", "--role", "root", *run_dir])
    assert bad.exit_code != 0 and "valid roles: user, reviewer, admin" in bad.output
    revoked = runner.invoke(keys_app, ["revoke", principal.key_id, *run_dir])
    assert revoked.exit_code == 0 and store.verify(key) is None
    assert runner.invoke(keys_app, ["revoke", "nope", *run_dir]).exit_code != 0


def test_serve_settings_come_from_a_file_or_the_main_config(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("gateway:\n  port: 9999\n  rate_limit:\n    burst: 3\n")
    settings, run_dir, store = resolve_settings(None, config)
    assert settings.port == 9999 and settings.rate_limit.burst == 3 and store is None
    config.write_text("gateway:\n  rate_limit:\n    brust: 3\n")
    with pytest.raises(typer.BadParameter, match="rate_limit.brust"):
        resolve_settings(None, config)
    from loopwright.config import load_settings

    main = load_settings("local", env={"LOOPWRIGHT_RUN_DIR": str(tmp_path / "run")})
    settings, run_dir, _ = resolve_settings(main, None)
    assert run_dir == main.run_path and settings.routing.app == main.app
    assert settings.routing.tracking_uri == main.mlflow_tracking_uri


def test_simulation_refuses_non_loopback_targets(tmp_path):
    from loopwright.domain_skeleton import init_domain_folder

    check_loopback("http://127.0.0.1:8400")
    check_loopback("http://[::1]:8400")
    check_loopback("http://localhost:1")
    for url in ("http://10.0.0.5:8400", "https://api.example.com", "http://0.0.0.0:1"):
        with pytest.raises(SimulationError, match="only loopback"):
            check_loopback(url)
    with pytest.raises(SimulationError, match="rps"):
        asyncio.run(run_simulation("http://127.0.0.1:1", "k", domain=EXAMPLE, rps=0, minutes=1))
    own = tmp_path / "own"  # a user's domain: no simulated users
    init_domain_folder(own, "own")
    with pytest.raises(SimulationError, match="has no user_simulator"):
        asyncio.run(run_simulation("http://127.0.0.1:1", "k", domain=str(own), rps=1, minutes=1))


def test_simulated_users_drive_the_gateway_and_leave_feedback(tmp_path):
    settings = GatewaySettings.model_validate(
        {"rate_limit": {"requests_per_s": 1000, "burst": 1000}}
    )
    gw = Gateway(settings, tmp_path / "run")
    _, key = gw.keys.create("sim")
    with LiveServer(create_app(gw)) as server:
        report = asyncio.run(
            run_simulation(
                server.url,
                key,
                domain=EXAMPLE,
                rps=40,
                minutes=0.05,
                max_requests=60,
                seed=3,
                mix={"ordinary": 0.5, "adversarial": 0.3, "harmful": 0.2},
            )
        )
    assert report.sent == 60 and report.ok == 60 and report.errors == 0
    assert report.by_status == Counter({"200": 60})
    assert set(report.by_user_kind) == {"ordinary", "adversarial", "harmful"}
    assert report.blocked > 0  # jailbreak patterns catch some adversarial users
    assert report.feedback_sent > 10 and report.feedback_ok == report.feedback_sent
    logged = spool_records(tmp_path / "run")
    assert sorted(r["id"] for r in logged) == sorted(report.interaction_ids)
    feedback = spool_records(tmp_path / "run", "feedback")
    assert len(feedback) == report.feedback_sent
    assert {f["interaction_id"] for f in feedback} <= set(report.interaction_ids)


def test_simulate_command_prints_counts(tmp_path):
    app = typer.Typer()
    app.command()(simulate)
    result = CliRunner().invoke(app, ["--url", "http://192.168.1.10:8400", "--api-key", "k"])
    assert result.exit_code != 0 and "only loopback" in result.output
    assert "API key" in CliRunner().invoke(app, []).output


def test_load_components_builds_guard_embedder_and_facts(tiny_guard, tmp_path):
    from loopwright.gateway.components import load_components
    from tests.loopwright.gateway.conftest import GUARD_CACHE

    settings = GatewaySettings.model_validate(
        {
            "domain": "examples.helpdesk.plugin:domain",  # its knowledge_facts() hook
            "encoders": {"guard_dir": str(GUARD_CACHE), "runtime": "torch"},
        }
    )
    comps = load_components(settings, tmp_path)
    assert comps.guard is not None and comps.embedder is not None and comps.store is None
    assert len(comps.facts) >= 200 and len({f.id for f in comps.facts}) == len(comps.facts)
    assert comps.embedder.encode(["hello"]).shape == (1, 384)
    # No kb_path and no domain: the gateway serves without retrieval (no example fallback).
    bare = load_components(settings.model_copy(update={"domain": None}), tmp_path)
    assert bare.facts == []


@pytest.mark.slow  # a fresh interpreter importing the whole stack: ~10 s idle, more on load
def test_serve_command_starts_uvicorn_with_the_app_factory(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.loopwright.gateway.gateway_helpers import REPO, free_port

    config = tmp_path / "gw.yaml"
    config.write_text(
        "input_rails: {guard: false}\noutput_rails: {guard: false}\naugment: {retrieval: false}\n"
    )
    port = free_port()
    code = (
        "import typer; from loopwright.gateway.cli import serve; app = typer.Typer(); "
        "app.command()(serve); app.command('x')(lambda: None); app()"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.time() < deadline, "serve did not become ready"
            time.sleep(0.3)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "helpdesk-policy", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 401  # keys are on by default
        assert (tmp_path / ".loopwright" / "gateway" / "keys.sqlite").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    records = spool_records(tmp_path / ".loopwright")
    assert [r["status_code"] for r in records] == [401]  # sealed on shutdown, kept locally
