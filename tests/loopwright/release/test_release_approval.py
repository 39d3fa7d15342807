"""Approval decisions over the Prefect form, the MLflow tag, timeout and auto-approve."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from release_fixtures import CANARY_NOW, CANARY_T0, champion, logs, policy, summary

from loopwright.release.approval import (
    AUTO_APPROVER,
    ApprovalDecision,
    ApprovalInput,
    decide_approval,
    mlflow_approval,
    render_evidence_markdown,
)
from loopwright.release.canary import analyse, load_canary_policy
from loopwright.release.gate import decide

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def wait(**kw: object) -> ApprovalDecision | None:
    args: dict[str, object] = {
        "requested_at": T0,
        "now": T0 + timedelta(minutes=5),
        "timeout": HOUR,
    }
    args.update(kw)
    return decide_approval(**args)  # type: ignore[arg-type]


def test_prefect_form_approve() -> None:
    form = ApprovalInput(approve=True, reviewer="ann", reason="deltas fine, canary clean")
    got = wait(prefect_input=form, prefect_received_at=T0 + timedelta(minutes=3))
    assert got == ApprovalDecision(
        approved=True,
        by="ann",
        at=T0 + timedelta(minutes=3),
        reason="deltas fine, canary clean",
        channel="prefect",
    )


def test_prefect_form_reject_never_approves_even_with_auto() -> None:
    form = ApprovalInput(approve=False, reviewer="bob", reason="hallucination up")
    got = wait(prefect_input=form, auto_approve=True)
    assert got is not None and not got.approved
    assert (got.channel, got.by) == ("prefect", "bob")


def test_form_requires_reviewer_and_reason() -> None:
    with pytest.raises(ValueError, match="reviewer"):
        ApprovalInput(approve=True, reviewer="", reason="x")
    with pytest.raises(ValueError, match="reason"):
        ApprovalInput.model_validate({"approve": True, "reviewer": "ann"})


def test_mlflow_tag_approve_and_reject() -> None:
    tags = {"approval": "Approved", "approval.by": "cara", "approval.reason": "looked at evals"}
    got = wait(mlflow_tags=tags)
    assert got is not None and got.approved and got.channel == "mlflow" and got.by == "cara"
    assert got.at == T0 + timedelta(minutes=5)  # seen now: the UI records no time
    rejected = wait(mlflow_tags={"approval": "rejected"})
    assert rejected is not None and not rejected.approved
    assert rejected.by == "unknown (MLflow UI)"


@pytest.mark.parametrize(
    ("tags", "logged"),
    [
        ({"approval": "approved"}, "without approval.by"),
        ({"approval": "yes", "approval.by": "dan"}, "valid values are ['approved', 'rejected']"),
        ({"approval": "timeout"}, None),
        ({}, None),
    ],
)
def test_mlflow_tags_that_are_not_a_decision_keep_waiting(
    tags: dict[str, str], logged: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="loopwright.release.approval"):
        assert wait(mlflow_tags=tags) is None
    if logged:
        assert logged in caplog.text


def test_timeout_never_promotes() -> None:
    assert wait(now=T0 + HOUR - timedelta(seconds=1)) is None
    got = wait(now=T0 + HOUR)
    assert got is not None and not got.approved and got.channel == "timeout"
    assert "no approval within 1:00:00" in got.reason


def test_approval_after_the_deadline_does_not_count() -> None:
    form = ApprovalInput(approve=True, reviewer="ann", reason="late")
    got = wait(
        now=T0 + 2 * HOUR, prefect_input=form, prefect_received_at=T0 + 90 * timedelta(minutes=1)
    )
    assert got is not None and not got.approved and got.channel == "timeout"
    assert "late approval(s) ignored: ['ann']" in got.reason


def test_auto_approve_records_that_no_person_reviewed() -> None:
    got = wait(auto_approve=True)
    assert got is not None and got.approved
    assert (got.channel, got.by) == ("auto", AUTO_APPROVER)
    assert "no person reviewed" in got.reason
    assert got.to_tags()["approval.channel"] == "auto"


def test_rejection_wins_over_approval_seen_at_the_same_time() -> None:
    form = ApprovalInput(approve=True, reviewer="ann", reason="ok")
    got = wait(prefect_input=form, mlflow_tags={"approval": "rejected", "approval.by": "eve"})
    assert got is not None and not got.approved and got.by == "eve"


def test_earliest_approval_wins() -> None:
    form = ApprovalInput(approve=True, reviewer="ann", reason="ok")
    tags = {
        "approval": "approved",
        "approval.by": "cara",
        "approval.at": (T0 + timedelta(minutes=1)).isoformat(),
    }
    got = wait(prefect_input=form, prefect_received_at=T0 + timedelta(minutes=4), mlflow_tags=tags)
    assert got is not None and got.by == "cara" and got.channel == "mlflow"


def test_tags_round_trip_through_the_mlflow_reader() -> None:
    for approved in (True, False):
        decision = ApprovalDecision(
            approved=approved, by="ann", at=T0, reason="r", channel="prefect"
        )
        back = mlflow_approval(decision.to_tags(), seen_at=T0 + HOUR)
        assert back is not None
        assert (back.approved, back.by, back.at, back.reason) == (approved, "ann", T0, "r")
    timeout = ApprovalDecision(approved=False, by="x", at=T0, reason="r", channel="timeout")
    assert timeout.to_tags()["approval"] == "timeout"
    assert mlflow_approval(timeout.to_tags(), seen_at=T0) is None


def test_form_is_a_valid_prefect_run_input() -> None:
    """The lead pauses with wait_for_input=ApprovalInput; Prefect must accept the model."""
    from prefect.input.run_input import RunInput

    form = RunInput.subclass_from_base_model_type(ApprovalInput)
    with_description = form.with_initial_data(description="## evidence", approve=False)
    assert set(with_description.model_fields) >= {"approve", "reviewer", "reason"}
    submitted = form.model_validate({"approve": True, "reviewer": "ann", "reason": "ok"})
    assert submitted.model_dump() == {"approve": True, "reviewer": "ann", "reason": "ok"}


def test_evidence_markdown_shows_deltas_worst_regressions_canary_and_links() -> None:
    cand = summary(
        deltas={
            "correctness": (-0.02, -0.025, -0.01),
            "helpfulness": (0.05, -0.01, 0.09),  # not significant: no reward-hacking flag
        }
    )
    verdict = decide(cand, champion(), policy())
    interactions, feedback = logs(canary={"error": 0.15})
    canary = analyse(interactions, feedback, load_canary_policy(), CANARY_NOW, started_at=CANARY_T0)
    md = render_evidence_markdown(
        verdict, cand, canary, {"Eval run": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}
    )
    assert "## Promote `models:/shop-policy/2` to champion?" in md
    assert "**Offline gate:** PASS" in md
    assert (
        "| raw | correctness | m | 0.7 [0.67, 0.73] | 0.7 | -0.02 [-0.025, -0.01] | 200 | ok |"
        in md
    )
    worst = md.split("### Worst regressions")[1].split("###")[0]
    assert "**correctness** -0.02 [-0.025, -0.01]" in worst
    assert "helpfulness" not in worst
    assert "**Verdict:** rollback" in md and "| error_rate |" in md and "harmful" in md
    assert "- [Eval run](http://127.0.0.1:5000/#/experiments/1/runs/abc)" in md
    blocked = decide(summary(n=10), champion(), policy())
    md2 = render_evidence_markdown(blocked, cand, None, {})
    assert "**Offline gate:** BLOCK" in md2 and "too few samples" in md2
    assert "No canary evidence." in md2
