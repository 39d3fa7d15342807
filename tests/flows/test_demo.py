"""`loopwright demo --tiny` end to end against the real session stack (the issue's must-show).

One run of the whole loop: bootstrap v1, the gateway serving it on a free port, simulated
users, night 1, gate (tiny-demo policy), canary with live traffic, canary analysis,
automatic approval, v2 promoted, a poisoned night stopped by validation/screening, and a
rollback; then the registry, the audit history, the data repository and the summary table
are checked.
"""

from __future__ import annotations

import socket

import pytest

from tests.flows.conftest import make_dvc_repo

pytestmark = pytest.mark.services

APP = "demo"
BUCKET = "demo-loop"  # own bucket: other flow tests ingest from the session's default one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def demo_run(stack_settings, tmp_path_factory):
    import torch

    from flows.demo import demo_flow
    from loopwright.demo import DemoConfig, stop_gateway
    from loopwright.storage import ObjectStore

    torch.set_num_threads(1)
    repo = make_dvc_repo(tmp_path_factory.mktemp("demo") / "repo")
    base = stack_settings
    gateway = base.gateway.model_copy(
        update={
            "port": _free_port(),
            "log": base.gateway.log.model_copy(update={"store_uri": f"s3://{BUCKET}"}),
        }
    )
    settings = base.model_copy(
        update={
            "app": APP,
            "data_repo": repo,
            "object_store": base.object_store.model_copy(update={"bucket": BUCKET}),
            "gateway": gateway,
        }
    )
    ObjectStore.from_settings(settings).ensure_bucket(f"s3://{BUCKET}/")
    stop_gateway(settings)  # a gateway left in the shared run dir would serve another app
    try:
        outcome = demo_flow(settings, config=DemoConfig.for_size(tiny=True))
    finally:
        stop_gateway(settings)
    return settings, outcome


def test_demo_completes_the_whole_loop(demo_run):
    _, outcome = demo_run
    assert outcome.ok, outcome.steps
    assert outcome.facts["release"] == "promoted"


def test_candidate_promoted_with_recorded_auto_approval_then_rolled_back(demo_run):
    from mlflow import MlflowClient

    from loopwright.release.approval import AUTO_APPROVER
    from loopwright.release.registry_ops import RegistryOps

    settings, outcome = demo_run
    v1, v2 = outcome.facts["v1"], outcome.facts["v2"]
    name = settings.registered_model("policy")
    client = MlflowClient()
    # After the rollback v1 serves again, and v2 keeps its approval record.
    assert client.get_model_version_by_alias(name, "champion").version == v1
    tags = client.get_model_version(name, v2).tags
    assert tags["gate.passed"] == "true"
    assert tags["gate.policy_version"] == "demo-tiny-2"
    assert tags["canary.verdict"] == "promote"
    assert (tags["approval"], tags["approval.channel"], tags["approval.by"]) == (
        "approved",
        "auto",
        AUTO_APPROVER,
    )
    assert any("AUTOMATIC" in result for step, result in outcome.steps if step == "approval")

    moves = [
        (m.op, m.alias, m.from_version, m.to_version)
        for m in RegistryOps(client, settings.app, settings.run_path / "locks").history(name)
    ]
    promoted = moves.index(("promote", "champion", v1, v2))
    rolled_back = moves.index(("rollback", "champion", v2, v1))
    assert promoted < rolled_back
    # Only the promotion and the rollback moved champion in between (night 2 did not).
    between = [m for m in moves[promoted + 1 : rolled_back] if m[1] == "champion"]
    assert between == []


def test_poisoned_night_rejected_before_training(demo_run):
    from loopwright.data.batches import load_manifest
    from loopwright.data.tables import DataLayout

    settings, outcome = demo_run
    facts = outcome.facts
    assert "rejected before training" in facts["night2_rejected"]
    assert facts["night2_champion_before"] == facts["night2_champion_after"] == facts["v2"]
    assert facts["night2_data_before"] == facts["night2_data_after"]
    manifest = load_manifest(DataLayout(settings.data_repo / "data" / "production"))
    last = max(manifest.batches)
    assert manifest.batches[last].state == "rejected"
    assert [b.batch for b in manifest.committed()] == [last - 1]


def test_summary_table_has_a_row_per_gated_dimension(demo_run):
    from loopwright.demo import TINY_GATE_POLICY
    from loopwright.release.gate import load_gate_policy

    _, outcome = demo_run
    policy = load_gate_policy(TINY_GATE_POLICY)
    required = {k for k, rule in policy.dimensions.items() if "/" not in k and rule.required}
    rows = {row.dimension: row for row in outcome.table}
    assert required <= set(rows)
    assert set(rows) <= set(policy.dimensions)
    for row in rows.values():
        assert row.passed is True
        assert row.ci_low <= row.delta <= row.ci_high
        assert row.v2 - row.v1 == pytest.approx(row.delta)
