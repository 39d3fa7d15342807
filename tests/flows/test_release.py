"""The release flow against the real stack: gate, canary on live logs, approval, promotion."""

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.flows.reviewer import answer_when_paused, in_thread

pytestmark = pytest.mark.services

FIXTURES = Path(__file__).parent / "fixtures"


def _arm_traffic(settings, stop: threading.Event) -> None:
    """Once the canary alias exists, ship live-looking logs for both arms (same quality)."""
    from data_sim import interaction, simulate
    from mlflow import MlflowClient

    from loopwright.data.logs import write_log_partition
    from loopwright.storage import ObjectStore

    client = MlflowClient()
    while not stop.is_set():
        if "canary" in client.get_registered_model("boot-policy").aliases:
            break
        time.sleep(0.5)
    now = datetime.now(UTC)
    traffic = simulate(800, seed=7, id_prefix="live", block_prob=0.0)
    records = []
    for k, (req, rec) in enumerate(zip(traffic.requests, traffic.interactions, strict=True)):
        route = "canary" if k % 2 else "champion"
        records.append(interaction(req, rec.response or "", iid=f"live-{k}", when=now, route=route))
    write_log_partition(
        ObjectStore.from_settings(settings),
        f"s3://{settings.object_store.bucket}",
        records,
        now,
        spool="live",
    )


def test_release_promotes_after_approval_through_the_api(bootstrapped, nightly_candidate):
    from mlflow import MlflowClient

    from flows.release import release_flow
    from loopwright.release.config import ReleaseConfig
    from loopwright.release.registry_ops import RegistryOps

    settings = bootstrapped.settings
    client = MlflowClient()
    old_champion = client.get_model_version_by_alias("boot-policy", "champion").version
    candidate = nightly_candidate.version
    config = ReleaseConfig(
        canary_fraction=0.5,
        window_s=3,
        max_canary_s=9,
        approval_timeout_s=300,
        suites=["correctness", "harmlessness", "over_refusal"],
        gate_policy=FIXTURES / "gate_permissive.yaml",
        canary_policy=FIXTURES / "canary_fast.yaml",
    )
    stop = threading.Event()
    in_thread(_arm_traffic, settings, stop)
    answer = {"approve": True, "reviewer": "alice", "reason": "looks good"}
    in_thread(answer_when_paused, "release", answer, stop)
    try:
        outcome = release_flow(settings, candidate, config)
    finally:
        stop.set()
    assert outcome == "promoted"
    mv = client.get_model_version("boot-policy", candidate)
    assert "champion" in mv.aliases
    assert client.get_model_version_by_alias("boot-policy", "previous").version == old_champion
    assert mv.tags["approval"] == "approved" and mv.tags["approval.by"] == "alice"
    assert mv.tags["gate.passed"] == "true"
    assert mv.tags["canary.verdict"] == "promote"

    ops = RegistryOps(client, "boot", settings.run_path / "locks")
    moves = [(m.op, m.alias, m.from_version, m.to_version) for m in ops.history("boot-policy")]
    assert ("promote", "champion", old_champion, candidate) in moves
    assert ("promote", "previous", None, old_champion) in moves

    # One command rolls back: champion returns to the previous version, recorded.
    from stackenv import SESSION_STACK_ENV
    from typer.testing import CliRunner

    from loopwright.cli import app

    env = dict(SESSION_STACK_ENV, LOOPWRIGHT_APP="boot")
    result = CliRunner().invoke(
        app, ["rollback", "--reason", "test rollback", "--actor", "bob"], env=env
    )
    assert result.exit_code == 0, result.output
    assert client.get_model_version_by_alias("boot-policy", "champion").version == old_champion
    last = ops.history("boot-policy")[-1]
    assert (last.op, last.actor, last.reason) == ("rollback", "bob", "test rollback")
