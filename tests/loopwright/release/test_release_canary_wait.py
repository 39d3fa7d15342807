"""How long a canary serves: promote / rollback / keep waiting, up to the deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from loopwright.release.canary import load_canary_policy
from loopwright.release.canary_wait import (
    CanaryRun,
    CanaryStep,
    first_check_at,
    next_canary_step,
)
from loopwright.release.config import ReleaseConfig
from loopwright.release.gate import decide
from tests.loopwright.release.release_fixtures import champion, policy, summary

T0 = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
CONFIG = ReleaseConfig(window_s=300, max_canary_s=3600)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_decided_analysis_ends_the_wait():
    step = next_canary_step("promote", ["all ok"], T0, at(600), CONFIG)
    assert (step.action, step.next_check_at) == ("promote", None)
    step = next_canary_step("rollback", ["harmful: error_rate"], T0, at(600), CONFIG)
    assert step.action == "rollback" and "harmful: error_rate" in step.reason


def test_inconclusive_waits_one_window_then_analyses_again():
    step = next_canary_step("inconclusive", ["extend the window: 50 < 200"], T0, at(300), CONFIG)
    assert step.action == "wait"
    assert step.next_check_at == at(600)
    assert "50 < 200" in step.reason


def test_the_last_analysis_falls_on_the_deadline_not_after_it():
    step = next_canary_step("inconclusive", ["undecided"], T0, at(3500), CONFIG)
    assert step.action == "wait" and step.next_check_at == at(3600)


@pytest.mark.parametrize("elapsed", [3600, 3601, 7200])
def test_still_inconclusive_at_the_deadline_rolls_back_naming_the_setting(elapsed):
    step = next_canary_step(
        "inconclusive", ["extend the window: 150 < 200"], T0, at(elapsed), CONFIG
    )
    assert step.action == "rollback"
    assert "max_canary_s" in step.reason and "150 < 200" in step.reason


def test_a_canary_checked_every_window_is_decided_by_its_deadline():
    """Inconclusive forever: the checks come every window and end exactly at the deadline."""
    config = ReleaseConfig(window_s=700, max_canary_s=3600)
    check, checks = first_check_at(T0, config), []
    while True:
        checks.append((check - T0).total_seconds())
        step = next_canary_step("inconclusive", ["undecided"], T0, check, config)
        if step.next_check_at is None:
            break
        check = step.next_check_at
    assert checks == [700, 1400, 2100, 2800, 3500, 3600]
    assert step.action == "rollback"


def test_first_check_never_later_than_the_deadline(tmp_path):
    assert first_check_at(T0, CONFIG) == at(300)
    quick = tmp_path / "canary.yaml"
    quick.write_text("version: t\nmin_duration_s: 10\n", encoding="utf-8")
    short = ReleaseConfig(window_s=60, max_canary_s=30, canary_policy=quick)
    assert first_check_at(T0, short) == at(30)


def test_a_step_waits_exactly_when_it_has_a_next_check():
    with pytest.raises(ValidationError, match="next_check_at"):
        CanaryStep(action="wait", reason="x")
    with pytest.raises(ValidationError, match="next_check_at"):
        CanaryStep(action="promote", reason="x", next_check_at=T0)


def test_canary_run_survives_the_trip_through_deployment_parameters():
    """A re-check gets the run as JSON (Prefect stores parameters): nothing is lost."""
    cand = summary()
    gate = decide(cand, champion(), policy())
    run = CanaryRun(candidate="2", champion="1", started_at=T0, gate=gate, summary=cand)
    assert CanaryRun.model_validate(run.model_dump(mode="json")) == run


def test_packaged_defaults_can_promote_under_the_packaged_canary_policy():
    """The production release waits at least as long as the canary policy demands."""
    config = ReleaseConfig()
    assert config.max_canary_s >= load_canary_policy().min_duration_s


def test_a_deadline_before_the_policy_minimum_is_rejected_naming_both():
    from loopwright.release.canary import default_canary_policy_path
    from loopwright.release.config import with_domain_policies

    with pytest.raises(ValidationError) as err:
        ReleaseConfig(max_canary_s=180, canary_policy=default_canary_policy_path())
    message = str(err.value)
    assert "max_canary_s" in message and "min_duration_s" in message
    assert "max_canary_s >= 600" in message
    # Unnamed, the policy is the domain's or the packaged one: checked once it is named.
    with pytest.raises(ValidationError, match="max_canary_s >= 600"):
        with_domain_policies(ReleaseConfig(max_canary_s=180), "examples.helpdesk.plugin:domain")
