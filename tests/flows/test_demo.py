"""`loopwright demo --tiny` end to end against the real session stack (the issue's must-show).

One run of the whole loop: bootstrap v1, the gateway serving it on a free port, simulated
users, night 1, gate (tiny-demo policy), canary with live traffic, canary analysis,
automatic approval, v2 promoted, a poisoned night stopped by validation/screening, and a
rollback; then the registry, the audit history, the data repository and the summary table
are checked.
"""

from __future__ import annotations

import pytest

from tests.flows.conftest import make_dvc_repo, own_app_settings

APP = "demo"
BUCKET = "demo-loop"  # own bucket: other flow tests ingest from the session's default one


@pytest.fixture(scope="module")
def demo_run(stack_settings, tmp_path_factory):
    import torch

    from examples.helpdesk.demo_flow import demo_flow
    from loopwright.demo import DemoConfig, stop_gateway

    torch.set_num_threads(1)
    repo = make_dvc_repo(tmp_path_factory.mktemp("demo") / "repo")
    settings = own_app_settings(stack_settings, APP, BUCKET, repo)
    try:
        outcome = demo_flow(settings, config=DemoConfig.for_size(tiny=True))
    finally:
        stop_gateway(settings)
    return settings, outcome


@pytest.mark.services
def test_demo_completes_the_whole_loop(demo_run):
    _, outcome = demo_run
    assert outcome.ok, outcome.steps
    assert outcome.facts["release"] == "promoted"


@pytest.mark.services
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
    assert tags["gate.policy_version"] == "demo-tiny-4"
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
    # The running gateway followed the rollback (its answers name what served them).
    assert "gateway_followed_s" in outcome.facts, outcome.steps
    # Only the promotion and the rollback moved champion in between (night 2 did not).
    between = [m for m in moves[promoted + 1 : rolled_back] if m[1] == "champion"]
    assert between == []


@pytest.mark.services
def test_poisoned_night_rejected_before_training(demo_run):
    from loopwright.data.batches import load_manifest
    from loopwright.data.tables import DataLayout

    settings, outcome = demo_run
    facts = outcome.facts
    assert "rejected before training" in facts["poisoned_rejected"]
    assert facts["poisoned_champion_before"] == facts["poisoned_champion_after"] == facts["v2"]
    assert facts["poisoned_data_before"] == facts["poisoned_data_after"]
    manifest = load_manifest(DataLayout(settings.data_repo / "data" / "production"))
    last = max(manifest.batches)
    assert manifest.batches[last].state == "rejected"
    assert [b.batch for b in manifest.committed()] == [last - 1]


@pytest.mark.services
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
        assert row.ci_low <= row.ci_high
        assert row.v2 - row.v1 == pytest.approx(row.delta)


def test_gateway_child_loads_exactly_the_demo_settings(tmp_path):
    """The gateway runs as a child process: what it loads must equal the demo's settings."""
    from loopwright.config import load_settings, settings_env
    from loopwright.demo import with_log_seal

    base = load_settings("local", env={"LOOPWRIGHT_MLFLOW__PORT": "25050"})
    gateway = base.gateway.model_copy(update={"port": 23456})
    settings = with_log_seal(
        base.model_copy(
            update={
                "app": "demo",
                "run_dir": tmp_path / "run",
                "object_store": base.object_store.model_copy(update={"bucket": "demo-loop"}),
                "gateway": gateway,
            }
        ),
        3.0,
    )
    env = settings_env(settings)
    child = load_settings("local", env=env)
    assert child.app == "demo"
    assert child.gateway.port == 23456
    assert child.gateway.log.segment_max_age_s == 3.0
    assert child.mlflow.port == 25050
    assert child.object_store.bucket == "demo-loop"
    assert child.run_path == settings.run_path
    assert not any("SECRET" in name or "ACCESS_KEY" in name for name in env)
    assert "LOOPWRIGHT_PREFECT__PORT" not in env  # unchanged settings are not passed


def test_demo_sizes():
    from loopwright.demo import TINY_CANARY_POLICY, TINY_GATE_POLICY, DemoConfig

    full, tiny = DemoConfig.for_size(False), DemoConfig.for_size(True)
    assert full.gate_policy is None  # the full-size demo gates with the packaged default
    assert (tiny.gate_policy, tiny.canary_policy) == (TINY_GATE_POLICY, TINY_CANARY_POLICY)
    for config in (full, tiny):
        # Night 2's batch holds the canary window's honest users too: the attack must not
        # be diluted below what screening detects, however long the canary ran.
        assert config.poison_requests >= 2 * config.canary_requests
        assert config.attack_requests(10 * config.canary_requests) == 20 * config.canary_requests
        # Users keep arriving through every window the analysis may extend to, in rounds
        # of at most one window (a round outlives the release's decision by that much).
        per_round = config.canary_round_requests()
        assert per_round <= config.window_s * config.rps + 1
        assert (
            config.canary_rounds() * per_round / config.rps >= config.max_windows * config.window_s
        )
    with pytest.raises(ValueError, match="canary_fraction"):
        DemoConfig(canary_fraction=1.0)


def test_canary_users_keep_arriving_until_the_canary_ends(monkeypatch):
    """Rounds of users go on while the version is the canary, and stop when it ends."""
    from loopwright import demo
    from loopwright.simulate import SimulationReport

    config = demo.DemoConfig.for_size(tiny=True)
    # The first answer is wait_for_canary's; a registry that cannot be asked (None) is
    # not an end of the canary.
    states = iter(["canary", None, "canary", "other"])
    seeds: list[int] = []

    def fake_drive(settings, key, *, requests, rps, seed, poisoned=False):
        seeds.append(seed)
        return SimulationReport(sent=requests, ok=requests, blocked=1, feedback_ok=2)

    monkeypatch.setattr(demo, "_canary_state", lambda settings, version: next(states))
    monkeypatch.setattr(demo, "drive_traffic", fake_drive)
    monkeypatch.setattr(demo, "wait_shipped", lambda settings: None)
    counts = demo.canary_users(None, "key", "2", config, seed=2)  # type: ignore[arg-type]
    per_round = config.canary_round_requests()
    assert counts == {
        "sent": 3 * per_round,
        "ok": 3 * per_round,
        "errors": 0,
        "blocked": 3,
        "feedback": 6,
    }
    assert seeds == [2, 1002, 2002]  # every round new users

    monkeypatch.setattr(demo, "_canary_state", lambda settings, version: "blocked")
    assert demo.canary_users(None, "key", "2", config, seed=2)["sent"] == 0  # type: ignore[arg-type]


def test_background_hands_back_result_and_exception():
    from loopwright.demo import background

    assert background(lambda: 41 + 1).result(timeout=10) == 42

    def boom() -> None:
        raise RuntimeError("traffic failed")

    with pytest.raises(RuntimeError, match="traffic failed"):
        background(boom).result(timeout=10)


@pytest.mark.services
def test_poisoned_batch_fails_screening_for_the_poisoning(demo_run):
    """Screening on its own rejects night 2's batch for what the attackers did.

    Validation runs first and may already reject the batch (the promotion itself shifts the
    output-rail actions, which the drift contract sees); screening then never runs in the
    nightly flow. So the batch is screened here directly: the attack must be caught on its
    own signals (poisoned corrections and ratings, the positive-rate shift), not only by
    the negative-share contract the tiny demo relaxes.
    """
    import pandas as pd

    from examples.helpdesk.plugin import (
        helpdesk_fact_checker,
        helpdesk_is_safe_response,
        helpdesk_screening_config,
    )
    from loopwright.data.batches import load_manifest
    from loopwright.data.screening import screen_frames
    from loopwright.data.tables import DataLayout, feedback_row, interaction_row
    from loopwright.records import FeedbackEvent, Interaction
    from loopwright.registry import download_model_folder
    from models.guard import Guard

    settings, _ = demo_run
    layout = DataLayout(settings.data_repo / "data" / "production")
    manifest = load_manifest(layout)
    night2 = max(manifest.batches)
    history = [b.stats.positive_rate for b in manifest.committed() if b.stats.positive_rate]
    # A rejected batch's rows are all in quarantine, with the original records.
    rows = pd.read_parquet(layout.root / "quarantine.parquet")
    rows = rows[rows["batch"] == night2]
    interactions = pd.DataFrame(
        [
            interaction_row(Interaction.model_validate_json(raw), "q", 0, night2)
            for raw in rows.loc[rows["table"] == "interactions", "raw"]
        ]
    )
    feedback = pd.DataFrame(
        [
            feedback_row(FeedbackEvent.model_validate_json(raw), "q", 0, night2)
            for raw in rows.loc[rows["table"] == "feedback", "raw"]
        ]
    )
    guard_dir = download_model_folder(
        f"models:/{settings.registered_model('guard')}@champion", settings.run_path / "model-cache"
    )
    config = helpdesk_screening_config()
    report = screen_frames(
        interactions,
        feedback,
        Guard.load(guard_dir),
        helpdesk_fact_checker(2),
        config,
        history_rates=history,
        is_refusal=helpdesk_is_safe_response,
    )
    suspicious = [
        k for k, why in report.feedback_reasons.items() if any("poison" in r for r in why)
    ]
    assert history and report.positive_rate is not None
    assert len(suspicious) / len(feedback) > config.max_suspicious_fraction or any(
        "positive_rate_shift" in r for r in report.batch_reasons
    ), (len(suspicious), len(feedback), report.batch_reasons)


def test_canary_summary_says_why_only_when_it_did_not_promote():
    from loopwright.demo import canary_summary

    assert canary_summary({"canary.verdict": "promote", "canary.reasons": "fine"}) == "promote"
    assert canary_summary({}) == "not started"
    line = canary_summary({"canary.verdict": "inconclusive", "canary.reasons": "x" * 900})
    assert line == "inconclusive (" + "x" * 600 + ")"
