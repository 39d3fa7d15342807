"""Online evaluation against the real stack: live traffic through a real gateway serving two
versions, shipped logs, one run of the flow, per-version figures read back from MLflow.

The bootstrapped registry (``bootstrapped``, shared by the flow tests) lends its champions:
they are copied to an app of this test's own (``onl``) with a bucket of its own, so no
alias of the shared app moves and no other test's traffic lands in the window.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

# slow: ~45 s on top of the shared bootstrap; the default tier is at its 15-minute budget.
pytestmark = [pytest.mark.services, pytest.mark.slow]

APP = "onl"
BUCKET = "onlineeval"
REQUESTS = 36
SAMPLES = 8


def _copy_champions(client: Any, settings: Any) -> None:
    """``onl-{policy,guard,reward}`` v1 = boot's champions; policy v2 (same weights) canary."""
    from loopwright.release.registry_ops import RegistryOps

    for kind in ("policy", "guard", "reward"):
        src = client.get_model_version_by_alias(f"boot-{kind}", "champion")
        # A copy keeps the tags, data_version (the drift reference's) among them.
        for _ in range(2 if kind == "policy" else 1):
            client.copy_model_version(f"models:/boot-{kind}/{src.version}", f"{APP}-{kind}")
        client.set_registered_model_alias(f"{APP}-{kind}", "champion", "1")
    ops = RegistryOps(client, APP, settings.run_path / "locks")
    ops.start_canary(f"{APP}-policy", "2", 0.5, reason="online eval test", actor="test")


def _post(client: Any, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    """POST as a well-behaved client: a 429 is retried after its ``Retry-After``."""
    for _ in range(10):
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _serve_traffic(settings: Any, run_dir: Any) -> tuple[Counter[str], Counter[str], int]:
    """Simulated users through the gateway; (requests, negative feedback) per version."""
    from fastapi.testclient import TestClient

    from examples.helpdesk import UserSimulator
    from loopwright.gateway.app import create_app
    from loopwright.gateway.cli import resolve_settings
    from loopwright.gateway.components import load_components
    from loopwright.gateway.service import Gateway

    gw_settings, _, store = resolve_settings(settings, None)
    gateway = Gateway(
        gw_settings, run_dir, **load_components(gw_settings, run_dir, store).as_kwargs()
    )
    _, key = gateway.keys.create("acme", "user")
    users = UserSimulator(seed=5)
    served: Counter[str] = Counter()
    negative: Counter[str] = Counter()
    unrouted = 0
    # Leaving the client stops the gateway, which seals and ships both logs.
    with TestClient(create_app(gateway)) as client:
        for i in range(REQUESTS):
            request = users.next_request()
            reply = _post(
                client,
                "/v1/chat/completions",
                {
                    "model": f"{APP}-policy",
                    "messages": request.messages,
                    "max_tokens": 24,
                    "user": request.user,
                },
                key,
            )
            version = reply["system_fingerprint"].split("@")[1].split("/")[0]
            if version == "none":  # blocked before any model served it
                unrouted += 1
                continue
            served[version] += 1
            feedback = (
                {"kind": "rating", "value": -1}
                if i % 3 == 0
                else {"kind": "correction", "value": "Please see the help centre."}
                if i % 3 == 1
                else {"kind": "rating", "value": 1}
            )
            _post(
                client,
                "/v1/feedback",
                {"interaction_id": reply["id"], "user": request.user, **feedback},
                key,
            )
            negative[version] += i % 3 == 0
    return served, negative, unrouted


def _pushgateway(port: int) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        return None
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the Pushgateway did not become ready")


def test_online_eval_logs_per_version_figures_of_live_traffic(bootstrapped, tmp_path):
    from mlflow import MlflowClient

    from flows.online_eval import online_eval_flow
    from loopwright.online_eval import OnlineEvalConfig
    from loopwright.storage import ObjectStore
    from tests.loopwright.gateway.gateway_helpers import free_port

    base = bootstrapped.settings
    gateway = base.gateway.model_copy(
        update={
            "log": base.gateway.log.model_copy(update={"store_uri": f"s3://{BUCKET}"}),
            # A rate-limited request is logged too (unrouted): none here, so counts are exact.
            "rate_limit": base.gateway.rate_limit.model_copy(
                update={"requests_per_s": 1000.0, "burst": 1000}
            ),
        }
    )
    settings = base.model_copy(
        update={
            "app": APP,
            "object_store": base.object_store.model_copy(update={"bucket": BUCKET}),
            "gateway": gateway,
        }
    )
    ObjectStore.from_settings(settings).ensure_bucket(f"s3://{BUCKET}")
    client = MlflowClient()
    _copy_champions(client, settings)
    served, negative, unrouted = _serve_traffic(settings, tmp_path / "gateway")
    assert set(served) == {"1", "2"}, served  # both arms got users

    port = free_port()
    pushgateway = _pushgateway(port)
    config = OnlineEvalConfig(
        samples_per_version=SAMPLES,
        min_drift_samples=5,
        lookback_s=900,
        pushgateway_url=f"http://127.0.0.1:{port}" if pushgateway else "",
    )
    try:
        result = online_eval_flow(settings, config)
        pushed = ""
        if pushgateway is not None:
            import httpx

            pushed = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        if pushgateway is not None:
            pushgateway.terminate()
            pushgateway.wait(timeout=10)
    assert set(result.versions) == {"1", "2"}

    # The figures, read back as a person (or a dashboard) would: from MLflow.
    experiment = client.get_experiment_by_name(f"{APP}-online-eval")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["model_versions"] == "1,2"
    assert tags["route.v1"] == "champion" and tags["route.v2"] == "canary"
    assert metrics["window.interactions"] == REQUESTS
    assert metrics["window.unrouted"] == unrouted
    for version, count in served.items():
        v = f"v{version}"
        assert metrics[f"{v}.total"] == count
        assert metrics[f"{v}.sampled"] == min(SAMPLES, count)
        assert metrics[f"{v}.negative_rating_rate"] == pytest.approx(negative[version] / count)
        assert 0.0 <= metrics[f"{v}.harmful_rate"] <= 1.0
        assert 0.0 <= metrics[f"{v}.ungrounded_rate"] <= 1.0
        assert metrics[f"{v}.reward_n"] >= 1 and f"{v}.reward_mean" in metrics
        assert 0.0 <= metrics[f"{v}.empty_rate"] <= 1.0  # the tiny test policy says little
        assert metrics[f"{v}.feedback_rate"] == 1.0  # every answered request got feedback
        assert f"{v}.drift.prompt_chars.psi" in metrics
        assert f"{v}.drift.guard_risk.ks_pvalue" in metrics
    assert "training prompts at data version" in run.data.params["reference"]
    assert client.list_artifacts(run.info.run_id)[0].path == "online_eval.json"

    # The latest figures also sit on the registered versions.
    for version, count in served.items():
        mv_tags = client.get_model_version(f"{APP}-policy", version).tags
        assert mv_tags["online.total"] == str(count)
        assert mv_tags["online.run_id"] == run.info.run_id

    # Once more from the command line: the profile plus LOOPWRIGHT_* overrides only, no
    # Pushgateway configured (skipped quietly), a second run in the same experiment.
    from stackenv import SESSION_STACK_ENV
    from typer.testing import CliRunner

    from loopwright.cli import app

    env = dict(
        SESSION_STACK_ENV,
        LOOPWRIGHT_APP=APP,
        LOOPWRIGHT_OBJECT_STORE__BUCKET=BUCKET,
        LOOPWRIGHT_DATA_REPO=str(bootstrapped.repo),
    )
    cli = CliRunner().invoke(app, ["online-eval", "--lookback", "900", "--samples", "4"], env=env)
    assert cli.exit_code == 0, cli.output
    assert f"v1 (champion): 4 of {served['1']} sampled" in cli.output
    assert len(client.search_runs([experiment.experiment_id])) == 2

    if pushgateway is not None:
        for version in served:
            hits = [
                row
                for row in pushed.splitlines()
                if row.startswith("loopwright_online_total{")
                and f'model_version="{version}"' in row
                and f'app="{APP}"' in row
            ]
            assert hits and float(hits[0].rsplit(" ", 1)[1]) == served[version], pushed[:2000]
