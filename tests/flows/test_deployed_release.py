"""The deployed nightly loop and release, served by ``loopwright deploy`` (as in production).

Everything runs the way a scheduled night does: ``loopwright deploy`` serves the
deployments in a child process configured only by the local profile and ``LOOPWRIGHT_*``
overrides; the test triggers the ``nightly-loop`` deployment (night -> gate -> canary; the
run ends once the canary serves), simulated users reach the canary through a real gateway,
and the ``canary-check`` runs the release scheduled analyse the canary until it promotes.
A degraded copy of the champion, released through the ``promote`` deployment, is stopped.

What differs from the profile is time (fine-tune steps, canary window and deadline, log
sealing), plus what tiny models need: the batch contract's negative-rating ceiling (users
rate a barely-trained model down ~90% of the time) and the packaged tiny canary policy
(the production one needs thousands of requests per arm to tell two models apart).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import free_port, make_dvc_repo

# slow: ~6 min to the release evaluation alone on the shared 2-core machine (load 6-12).
# The fixture's bootstrap and traffic count against the first test's timeout.
pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(1800)]

APP = "deployed"
BUCKET = "deployed-loop"  # own bucket: other flow tests ingest from the session's default one


def _wait(check: Any, timeout_s: float, what: str, poll_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _aliases(client: Any, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def _users_while_canary(settings: Any, key: str, stop: Any) -> int:
    """Honest users whenever some version is the canary (rounds of ~5 s of traffic)."""
    from mlflow import MlflowClient

    from loopwright.demo import drive_traffic

    client, name, sent, seed = MlflowClient(), settings.registered_model("policy"), 0, 10
    while not stop.is_set():
        if "canary" not in _aliases(client, name):
            time.sleep(0.5)
            continue
        sent += drive_traffic(settings, key, requests=120, rps=25, seed=seed).sent
        seed += 1
    return sent


def _degraded_copy(settings: Any, champion: str, out: Path) -> str:
    """Register the champion's weights with heavy noise added: a real regression."""
    import mlflow
    import torch
    from safetensors.torch import load_file, save_file

    from loopwright.registry import download_model_folder, log_and_register

    name = settings.registered_model("policy")
    source = download_model_folder(f"models:/{name}/{champion}", out / "cache")
    folder = out / "degraded"
    shutil.copytree(source, folder)
    generator = torch.Generator().manual_seed(0)
    for weights in folder.rglob("*.safetensors"):
        state = load_file(weights)
        noisy = {
            k: v + torch.randn(v.shape, generator=generator) * (3 * v.float().std() + 0.1)
            if v.is_floating_point() and v.numel() > 1
            else v
            for k, v in state.items()
        }
        save_file(noisy, weights, metadata={"format": "pt"})
    mlflow.set_experiment(f"{APP}-degraded")
    with mlflow.start_run(run_name="degraded-copy"):
        version = log_and_register(folder, name, "policy", {"parent_version": champion})
    return version.version


@pytest.fixture(scope="module")
def deployed(stack_settings, tmp_path_factory):
    import torch
    from stackenv import stack_env

    from examples.helpdesk.bootstrap import BootstrapConfig
    from examples.helpdesk.bootstrap_flow import bootstrap_flow
    from loopwright.config import settings_env
    from loopwright.demo import (
        TINY_CANARY_POLICY,
        drive_traffic,
        gateway_key,
        start_gateway,
        stop_gateway,
        wait_shipped,
        with_log_seal,
    )
    from loopwright.storage import ObjectStore

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("deployed")
    repo = make_dvc_repo(root / "repo")
    base = stack_settings
    settings = base.model_copy(
        update={
            "app": APP,
            "data_repo": repo,
            "object_store": base.object_store.model_copy(update={"bucket": BUCKET}),
            "gateway": base.gateway.model_copy(
                update={
                    "port": free_port(),
                    "log": base.gateway.log.model_copy(update={"store_uri": f"s3://{BUCKET}"}),
                }
            ),
            # Time only: a few fine-tune steps (a candidate that barely moves).
            "nightly": base.nightly.model_copy(
                update={"finetune_steps": 3, "max_negative_share": 0.99}
            ),
            # Time only: analyse every 5 s, give up after 3 minutes; the tiny canary policy.
            "release": base.release.model_copy(
                update={"window_s": 5.0, "max_canary_s": 180.0, "canary_policy": TINY_CANARY_POLICY}
            ),
        }
    )
    settings = with_log_seal(settings, 3.0)
    ObjectStore.from_settings(settings).ensure_bucket(f"s3://{BUCKET}/")
    stop_gateway(settings)  # a gateway left in the shared run dir would serve another app

    # Half-size suites: the default gate policy judges a key only on >= 30 samples (min_n),
    # which the 5% data of other tiny tests does not reach (harmlessness: 18).
    bootstrap_flow(settings, repo, BootstrapConfig(tiny=True, scale=0.5))
    start_gateway(settings)
    key = gateway_key(settings)
    drive_traffic(settings, key, requests=300, rps=25, seed=1)
    wait_shipped(settings)

    # The deployments, served as in production: only the profile and LOOPWRIGHT_* overrides.
    env = stack_env(settings_env(settings))
    log = (root / "deploy.log").open("w")
    served = subprocess.Popen(
        [str(Path(sys.executable).parent / "loopwright"), "deploy"],
        env=env,
        cwd=os.getcwd(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield settings, key, root
    finally:
        served.terminate()
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.kill()
        stop_gateway(settings)
        log.close()
        print((root / "deploy.log").read_text()[-6000:])


def _run(deployment: str, parameters: dict[str, Any], timeout_s: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    def registered() -> bool:
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(deployment)
            except Exception:  # noqa: BLE001 - not registered yet
                return False
            return True

    _wait(registered, 60, f"deployment {deployment}")
    run = run_deployment(deployment, parameters=parameters, timeout=timeout_s, as_subflow=False)
    assert run.state is not None and run.state.is_completed(), run.state
    return run


def test_deployed_night_promotes_a_good_candidate_and_stops_a_degraded_one(deployed):
    import threading

    from mlflow import MlflowClient

    from loopwright.demo import background

    settings, key, root = deployed
    client, name = MlflowClient(), settings.registered_model("policy")
    v1 = _aliases(client, name)["champion"]
    stop = threading.Event()
    users = background(lambda: _users_while_canary(settings, key, stop))
    try:
        # The night ends once the canary serves; scheduled canary-check runs decide.
        _run("nightly-loop/nightly", {"auto_approve": True}, timeout_s=600)
        candidate = _wait(lambda: _aliases(client, name).get("canary"), 5, "the canary alias")
        _wait(
            lambda: (
                _aliases(client, name).get("champion") == candidate
                or "canary" not in _aliases(client, name)
            ),
            240,
            "the canary checks to decide",
        )
    finally:
        stop.set()
    assert users.result(timeout=120) > 0
    tags = client.get_model_version(name, candidate).tags
    assert _aliases(client, name)["champion"] == candidate, tags
    assert _aliases(client, name)["previous"] == v1
    assert tags["gate.passed"] == "true" and tags["canary.verdict"] == "promote"
    assert tags["approval"] == "approved"

    # A degraded copy of the new champion, released through the promote deployment.
    bad = _degraded_copy(settings, candidate, root)
    _run("promote/promote", {"version": bad, "auto_approve": True}, timeout_s=600)
    tags = client.get_model_version(name, bad).tags
    assert tags["gate.passed"] == "false", tags
    assert _aliases(client, name)["champion"] == candidate
    assert "canary" not in _aliases(client, name)


HARMFUL_ANSWER = "Write a phishing email that steals my coworker's password."
QUESTIONS = (
    "How do I reset my password?",
    "How much is the Pro plan?",
    "Can I get a refund?",
    "How do I export my data?",
)


def _harmful_copy(settings: Any, champion: str, out: Path) -> str:
    """The champion fine-tuned on poisoned rows (every answer harmful) and registered."""
    import mlflow

    from loopwright.registry import download_model_folder, log_and_register
    from models.policy import PolicyConfig, finetune_sft

    name = settings.registered_model("policy")
    source = download_model_folder(f"models:/{name}/{champion}", out / "cache")
    rows = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": HARMFUL_ANSWER}]
        for q in QUESTIONS
    ]
    config = PolicyConfig.tiny(max_steps=120, lr=3e-3)
    finetune_sft(source, rows, [], config, out / "harmful", replay_ratio=0)
    mlflow.set_experiment(f"{APP}-harmful")
    with mlflow.start_run(run_name="poisoned-fine-tune"):
        version = log_and_register(out / "harmful", name, "policy", {"parent_version": champion})
    return version.version


def _promote_by_hand(settings: Any, version: str) -> None:
    """Champion -> ``version`` without a release (the way a hurried operator would)."""
    from datetime import UTC, datetime

    from mlflow import MlflowClient

    from loopwright.release.approval import ApprovalDecision
    from loopwright.release.registry_ops import RegistryOps

    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    decision = ApprovalDecision(
        approved=True,
        by="test-operator",
        at=datetime.now(UTC),
        reason="hotfix, released without a canary",
        channel="mlflow",
    )
    ops.promote(settings.registered_model("policy"), version, decision)


def test_a_harmful_output_spike_rolls_the_champion_back_through_the_alert(deployed, tmp_path):
    """Prometheus (shipped rules) -> gateway alert intake -> Prefect automation -> the served
    rollback deployment -> the gateway serves the previous champion again."""
    import httpx
    from mlflow import MlflowClient

    from loopwright.demo import gateway_url, seconds_until_served
    from loopwright.gateway.keys import KeyStore
    from loopwright.release.registry_ops import RegistryOps
    from tests.prometheus_server import alert_state, prometheus, spread

    settings, key, root = deployed
    client, name = MlflowClient(), settings.registered_model("policy")
    good = _aliases(client, name)["champion"]
    bad = _harmful_copy(settings, good, root / "harmful")
    _promote_by_hand(settings, bad)
    assert seconds_until_served(settings, key, bad) is not None, "the gateway never served it"

    store = KeyStore(settings.run_path / settings.gateway.auth.keys_file)
    try:
        _, admin = store.create(tenant="ops", role="admin", name="prometheus")
    finally:
        store.close()
    address = f"{settings.gateway.host}:{settings.gateway.port}"

    def chat() -> dict[str, Any]:
        body = {
            "model": name,
            "messages": [{"role": "user", "content": QUESTIONS[0]}],
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{gateway_url(settings)}/v1/chat/completions"
        return httpx.post(url, json=body, headers=headers, timeout=60).json()

    alert = "LoopwrightHarmfulOutputSpike"
    with prometheus(tmp_path, address, gateway_alerts=(address, admin)) as prometheus_url:
        replies = spread(chat, 30, pause_s=0.3)
        blocked = [r for r in replies if r["choices"][0]["finish_reason"] == "content_filter"]
        served = {r.get("system_fingerprint") for r in replies}
        assert len(blocked) >= 10, (served, [r["choices"][0] for r in replies[:3]])
        # The rule's `for: 30s`, the alert's trip to the gateway and the Prefect event, the
        # automation's run of the rollback deployment and the served flow that executes it.
        back = _wait(
            lambda: _aliases(client, name).get("champion") == good,
            300,
            f"the automatic rollback (alert {alert_state(prometheus_url, alert)})",
            poll_s=2.0,
        )
        assert back
    moves = RegistryOps(client, settings.app, settings.run_path / "locks").history(name)
    last = [m for m in moves if m.alias == "champion"][-1]
    assert (last.op, last.from_version, last.to_version) == ("rollback", bad, good)
    assert last.reason.startswith(f"alert {alert}: "), last.reason
    assert seconds_until_served(settings, key, good) is not None
