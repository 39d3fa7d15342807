"""Canary analysis on synthetic interaction logs: promote, rollback, inconclusive."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from release_fixtures import CANARY_NOW, CANARY_T0, arm, logs

from loopwright.records import FeedbackEvent, Interaction
from loopwright.release.canary import (
    CanaryInputError,
    CanaryPolicy,
    analyse,
    load_canary_policy,
    newcombe_interval,
)
from loopwright.release.strict import ConfigError

T0 = CANARY_T0
NOW = CANARY_NOW


@pytest.fixture(scope="module")
def pol() -> CanaryPolicy:
    return load_canary_policy()


def status_of(verdict: Any, signal: str) -> str:
    return next(c.status for c in verdict.comparisons if c.signal == signal)


def test_promote_when_arms_match_with_enough_traffic_and_time(pol: CanaryPolicy) -> None:
    interactions, feedback = logs()
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    assert verdict.decision == "promote", verdict.reasons
    assert {c.signal: c.status for c in verdict.comparisons} == {
        "output_block_rate": "ok",
        "fallback_rate": "ok",
        "negative_feedback_rate": "ok",
        "error_rate": "ok",
        "latency_p95": "ok",
        "reward": "ok",
    }
    assert verdict.champion.requests == verdict.canary.requests == 400
    assert verdict.canary.versions == {"2": 400}
    assert verdict.duration_s == 1800


@pytest.mark.parametrize(
    ("canary", "signal"),
    [
        ({"error": 0.15}, "error_rate"),
        ({"block": 0.15}, "output_block_rate"),
        ({"fallback": 0.2}, "fallback_rate"),
        ({"negative": 0.3}, "negative_feedback_rate"),
        ({"latency_ms": 250.0}, "latency_p95"),
        ({"reward": 0.1}, "reward"),
    ],
)
def test_rollback_when_one_signal_is_clearly_worse(
    pol: CanaryPolicy, canary: dict[str, Any], signal: str
) -> None:
    interactions, feedback = logs(canary=canary)
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    assert verdict.decision == "rollback"
    assert status_of(verdict, signal) == "harmful"
    assert [c.signal for c in verdict.comparisons if c.status == "harmful"] == [signal]
    assert verdict.reasons[0].startswith(f"harmful: {signal}")


def test_small_sample_with_a_worse_canary_is_inconclusive_not_rollback(
    pol: CanaryPolicy,
) -> None:
    # 2/10 errors versus 0/10: worse, but ten requests cannot tell it from chance.
    interactions, feedback = logs(n=10)
    for i in (0, 1):
        idx = next(k for k, it in enumerate(interactions) if it.id == f"canary-2-{i}")
        interactions[idx] = interactions[idx].model_copy(update={"status_code": 500})
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    assert verdict.canary.errors == 2 and verdict.champion.errors == 0
    assert verdict.decision == "inconclusive"
    assert status_of(verdict, "error_rate") == "inconclusive"
    assert "extend the window" in verdict.reasons[0]
    assert "10 of 200 requests" in verdict.reasons[0]


def test_enough_requests_but_too_short_a_window_is_inconclusive(pol: CanaryPolicy) -> None:
    interactions, feedback = logs()
    now = T0 + timedelta(minutes=5)
    short = [it for it in interactions if it.timestamp <= now]
    verdict = analyse(short, feedback, pol, now, started_at=T0)
    assert verdict.decision == "inconclusive"
    assert any("window spans 300 s of 600 s" in r for r in verdict.reasons)


def test_undecided_signal_with_enough_traffic_is_inconclusive(pol: CanaryPolicy) -> None:
    # Block rate 2% -> 5%: the interval straddles the tolerated +3 points.
    interactions, feedback = logs(canary={"block": 0.05})
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    block = next(c for c in verdict.comparisons if c.signal == "output_block_rate")
    assert block.ci_low is not None and block.ci_high is not None
    assert block.ci_low < 0.03 < block.ci_high
    assert verdict.decision == "inconclusive"
    assert any(
        r.startswith("extend the window, undecided: output_block_rate") for r in verdict.reasons
    )


def test_early_rollback_on_overwhelming_evidence_before_the_minimums(pol: CanaryPolicy) -> None:
    interactions, feedback = logs(canary={"error": 1.0}, n=30)
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    assert verdict.decision == "rollback"
    assert any("early rollback before the minimums" in r for r in verdict.reasons)
    patient = pol.model_copy(update={"early_rollback": False})
    waited = analyse(interactions, feedback, patient, NOW, started_at=T0)
    assert waited.decision == "inconclusive"
    assert any("not acted on before the minimums" in r for r in waited.reasons)


def test_counts_add_up_and_nothing_is_dropped_silently(pol: CanaryPolicy) -> None:
    interactions, feedback = logs(n=250)
    extra = [
        Interaction(id="rejected", timestamp=T0, tenant="acme", user_hash="u", route="none"),
        Interaction(
            id="early",
            timestamp=T0 - timedelta(hours=1),
            tenant="acme",
            user_hash="u",
            route="champion",
        ),
        Interaction(
            id="future",
            timestamp=NOW + timedelta(minutes=1),
            tenant="acme",
            user_hash="u",
            route="canary",
        ),
    ]
    fb_extra = [
        FeedbackEvent(
            id="x1",
            interaction_id="nope",
            kind="rating",
            value=-1,
            source="user",
            author="a",
            timestamp=T0,
        ),
        FeedbackEvent(
            id="x2",
            interaction_id="canary-2-0",
            kind="rating",
            value=-1,
            source="user",
            author="a",
            timestamp=NOW + timedelta(hours=1),
        ),
    ]
    verdict = analyse(interactions + extra, feedback + fb_extra, pol, NOW, started_at=T0)
    c = verdict.counts
    assert c["interactions"] == 503
    assert c["champion"] + c["canary"] + c["unrouted"] + c["out_of_window"] == c["interactions"]
    assert (c["unrouted"], c["out_of_window"]) == (1, 2)
    assert c["feedback_used"] + c["feedback_unmatched"] + c["feedback_after_now"] == c["feedback"]
    assert (c["feedback_unmatched"], c["feedback_after_now"]) == (1, 1)
    assert verdict.champion.feedback_events + verdict.canary.feedback_events == c["feedback_used"]


def test_window_defaults_to_first_canary_request(pol: CanaryPolicy) -> None:
    ci, cf = arm("champion", 300, seed=1, start=T0 - timedelta(hours=1), span=timedelta(minutes=89))
    ki, kf = arm("canary", 300, seed=2, start=T0 + timedelta(minutes=1))
    verdict = analyse(ci + ki, cf + kf, pol, NOW)
    assert verdict.window_start == T0 + timedelta(minutes=1)
    assert verdict.counts["out_of_window"] == sum(it.timestamp < verdict.window_start for it in ci)
    assert verdict.champion.requests + verdict.counts["out_of_window"] == 300


def test_feedback_kinds(pol: CanaryPolicy) -> None:
    base: dict[str, Any] = {"source": "reviewer", "author": "r", "timestamp": T0}
    its = [
        Interaction(id=f"i{k}", timestamp=T0, tenant="t", user_hash="u", route="canary")
        for k in range(5)
    ]
    fbs = [
        FeedbackEvent(id="a", interaction_id="i0", kind="reviewer_label", value="unsafe", **base),
        FeedbackEvent(id="b", interaction_id="i1", kind="reviewer_label", value="good", **base),
        FeedbackEvent(id="c", interaction_id="i2", kind="correction", value="fixed", **base),
        FeedbackEvent(
            id="d",
            interaction_id="i3",
            kind="preference",
            value={"chosen": "x", "rejected": "y"},
            **base,
        ),
        FeedbackEvent(id="e", interaction_id="i4", kind="rating", value=-1, **base),
        FeedbackEvent(id="f", interaction_id="i4", kind="rating", value=-1, **base),
    ]
    verdict = analyse(its, fbs, pol, T0)
    assert verdict.canary.negative_feedback == 3  # i0, i2, i4 (twice, counted once)
    assert verdict.canary.feedback_events == 6
    bad = FeedbackEvent(id="zz", interaction_id="i0", kind="rating", value="meh", **base)
    with pytest.raises(CanaryInputError, match="feedback zz: rating value 'meh'"):
        analyse(its, [bad], pol, T0)


def test_reward_from_a_callable_and_required_reward(pol: CanaryPolicy) -> None:
    interactions, feedback = logs(champion={"reward": None}, canary={"reward": None})
    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0)
    assert status_of(verdict, "reward") == "not_measured"
    assert verdict.decision == "promote"  # reward optional in the default policy
    assert any(r.startswith("not measured: reward") for r in verdict.reasons)
    required = pol.model_copy(update={"reward": pol.reward.model_copy(update={"required": True})})
    assert analyse(interactions, feedback, required, NOW, started_at=T0).decision == "inconclusive"

    def by_route(it: Interaction) -> float:
        jitter = int(it.id.rsplit("-", 1)[1]) % 7 / 100
        return (0.2 if it.route == "canary" else 0.6) + jitter

    verdict = analyse(interactions, feedback, pol, NOW, started_at=T0, reward_fn=by_route)
    assert status_of(verdict, "reward") == "harmful"
    assert verdict.decision == "rollback"


def test_canary_serving_several_versions_is_inconclusive(pol: CanaryPolicy) -> None:
    ci, cf = arm("champion", 300, seed=1)
    k1, _ = arm("canary", 150, seed=2, version="2")
    k2, _ = arm("canary", 150, seed=3, version="3")
    verdict = analyse(ci + k1 + k2, cf, pol, NOW, started_at=T0)
    assert verdict.decision == "inconclusive"
    assert any("several versions" in r for r in verdict.reasons)


def test_naive_now_rejected(pol: CanaryPolicy) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        analyse([], [], pol, datetime(2025, 1, 1))


def test_empty_log_is_inconclusive(pol: CanaryPolicy) -> None:
    verdict = analyse([], [], pol, NOW)
    assert verdict.decision == "inconclusive"
    assert verdict.champion.requests == verdict.canary.requests == 0


def test_newcombe_matches_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10.
    assert newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    with pytest.raises(ValueError):
        newcombe_interval(0, 0, 1, 2)


def test_verdict_tags(pol: CanaryPolicy) -> None:
    interactions, feedback = logs(canary={"error": 0.15})
    tags = analyse(interactions, feedback, pol, NOW, started_at=T0).to_tags()
    assert tags["canary.verdict"] == "rollback"
    assert tags["canary.requests"] == "champion=400,canary=400"
    assert all(len(v) < 5000 for v in tags.values())


def test_policy_file_validation(tmp_path: Path) -> None:
    assert load_canary_policy().min_requests_per_arm == 200
    bad = tmp_path / "canary.yaml"
    bad.write_text("version: 1\nmin_request_per_arm: 5\n")
    with pytest.raises(
        ConfigError, match=r"canary\.yaml.*min_request_per_arm.*'min_requests_per_arm'"
    ):
        load_canary_policy(bad)
    bad.write_text("version: 1\nerror_rate: {max_increase: 2}\n")
    with pytest.raises(ConfigError, match="error_rate.max_increase"):
        load_canary_policy(bad)
