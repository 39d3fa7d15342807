"""Approval of a promotion: a pure decision over the channels a person can use.

A person approves or rejects through the Prefect pause form (:class:`ApprovalInput`) or by
setting model-version tags in the MLflow UI (``approval=approved|rejected``,
``approval.by``, ``approval.reason``); whichever arrives first decides. A rejection on any
channel wins over an approval seen at the same time, a timeout or a rejection never
promotes, and auto-approve (the embedded default's demo mode) records that no person
reviewed. :func:`render_evidence_markdown` renders the evidence the form shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from loopwright.release.strict import StrictModel

if TYPE_CHECKING:  # only for annotations: keeps scipy out of registry_ops' import cost
    from loopwright.release.canary import CanaryVerdict
    from loopwright.release.gate import GateVerdict
    from loopwright.release.summary import EvalSummary

__all__ = [
    "AUTO_APPROVER",
    "ApprovalDecision",
    "ApprovalInput",
    "decide_approval",
    "mlflow_approval",
    "render_evidence_markdown",
]

logger = logging.getLogger(__name__)

Channel = Literal["prefect", "mlflow", "auto", "timeout"]
AUTO_APPROVER = "loopwright:auto-approve"
TAG_APPROVAL = "approval"
TAG_BY = "approval.by"
TAG_AT = "approval.at"
TAG_REASON = "approval.reason"
TAG_CHANNEL = "approval.channel"
MLFLOW_VALUES = ("approved", "rejected")


class ApprovalInput(BaseModel):
    """The form a reviewer fills in when the promotion flow pauses (Prefect renders it)."""

    model_config = ConfigDict(extra="forbid")

    approve: bool = Field(description="Promote this candidate to champion?")
    reviewer: str = Field(min_length=1, description="Who is deciding (name or handle)")
    reason: str = Field(min_length=1, description="Why: what in the evidence decided it")


class ApprovalDecision(StrictModel):
    """The outcome of an approval wait. ``approved`` is False for a rejection or a timeout."""

    approved: bool
    by: str
    at: datetime
    reason: str
    channel: Channel

    def to_tags(self) -> dict[str, str]:
        """Model-version tags recording who decided, when, why and through which channel.

        ``approval`` is ``approved``, ``rejected`` or ``timeout`` (a timeout is not a
        person's rejection; :func:`mlflow_approval` reads it back as "no decision").
        """
        status = (
            "approved"
            if self.approved
            else ("timeout" if self.channel == "timeout" else "rejected")
        )
        return {
            TAG_APPROVAL: status,
            TAG_BY: self.by[:250],
            TAG_AT: self.at.isoformat(),
            TAG_REASON: self.reason[:4900],
            TAG_CHANNEL: self.channel,
        }


def _parse_at(text: str | None, fallback: datetime) -> datetime:
    if not text:
        return fallback
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        logger.warning("approval.at tag %r is not ISO 8601; using the time it was seen", text)
        return fallback
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=fallback.tzinfo)


def mlflow_approval(tags: Mapping[str, str], seen_at: datetime) -> ApprovalDecision | None:
    """Read an approval a person set as model-version tags in the MLflow UI.

    ``approval`` must be ``approved`` or ``rejected`` (case-insensitive). An approval also
    needs ``approval.by`` (an anonymous approval is not accepted and is logged); a
    rejection does not. ``approval.at`` (ISO 8601) is used when present, else ``seen_at``.

    Returns:
        The decision, or None when the tags hold none (absent, ``timeout``, or invalid).

    """
    raw = tags.get(TAG_APPROVAL)
    if raw is None or raw.strip().lower() == "timeout":
        return None
    value = raw.strip().lower()
    if value not in MLFLOW_VALUES:
        logger.warning(
            "ignoring MLflow tag approval=%r: valid values are %s", raw, list(MLFLOW_VALUES)
        )
        return None
    by = tags.get(TAG_BY, "").strip()
    if value == "approved" and not by:
        logger.warning("ignoring MLflow tag approval=approved without approval.by (who?)")
        return None
    return ApprovalDecision(
        approved=value == "approved",
        by=by or "unknown (MLflow UI)",
        at=_parse_at(tags.get(TAG_AT), seen_at),
        reason=tags.get(TAG_REASON, "").strip() or "(no reason given)",
        channel="mlflow",
    )


def decide_approval(
    *,
    requested_at: datetime,
    now: datetime,
    timeout: timedelta,
    prefect_input: ApprovalInput | None = None,
    prefect_received_at: datetime | None = None,
    mlflow_tags: Mapping[str, str] | None = None,
    auto_approve: bool = False,
) -> ApprovalDecision | None:
    """Combine every approval channel into one decision. Pure.

    Precedence: a rejection on any channel; then the earliest approval given before the
    deadline (``requested_at + timeout``); then auto-approve; then, once ``now`` has
    reached the deadline, a timeout (never approved). An approval given after the deadline
    does not count.

    Args:
        requested_at: when the promotion started waiting.
        now: the time of this decision.
        timeout: how long a person has.
        prefect_input: the form the reviewer submitted, if any.
        prefect_received_at: when the form arrived (default ``now``).
        mlflow_tags: the candidate version's tags, if read.
        auto_approve: approve without a person (recorded as channel ``auto``).

    Returns:
        The decision, or None while still waiting.

    """
    deadline = requested_at + timeout
    decisions: list[ApprovalDecision] = []
    if prefect_input is not None:
        decisions.append(
            ApprovalDecision(
                approved=prefect_input.approve,
                by=prefect_input.reviewer,
                at=prefect_received_at or now,
                reason=prefect_input.reason,
                channel="prefect",
            )
        )
    if mlflow_tags:
        from_tags = mlflow_approval(mlflow_tags, now)
        if from_tags is not None:
            decisions.append(from_tags)

    rejections = sorted((d for d in decisions if not d.approved), key=lambda d: d.at)
    if rejections:
        return rejections[0]
    approvals = sorted((d for d in decisions if d.at <= deadline), key=lambda d: d.at)
    if approvals:
        return approvals[0]
    late = [d for d in decisions if d.at > deadline]
    if auto_approve:
        return ApprovalDecision(
            approved=True,
            by=AUTO_APPROVER,
            at=now,
            reason="auto-approve is on (embedded default): no person reviewed this promotion",
            channel="auto",
        )
    if now >= deadline:
        late_note = f"; late approval(s) ignored: {[d.by for d in late]}" if late else ""
        return ApprovalDecision(
            approved=False,
            by="loopwright:timeout",
            at=now,
            reason=f"no approval within {timeout}{late_note}",
            channel="timeout",
        )
    return None


def _num(x: float | None, fmt: str = ".4g") -> str:
    return "–" if x is None else format(x, fmt)


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f" [{_num(low)}, {_num(high)}]"


def render_evidence_markdown(
    gate_verdict: GateVerdict,
    eval_summary: EvalSummary,
    canary_verdict: CanaryVerdict | None,
    links: Mapping[str, str],
) -> str:
    """Render the approval form's evidence as markdown.

    Sections: the gate verdict, per-dimension deltas with CIs, the worst regressions,
    canary statistics, and links to the MLflow runs.

    Args:
        gate_verdict: the offline gate's verdict on the candidate.
        eval_summary: the candidate's evaluation summary.
        canary_verdict: the canary analysis, or None when there was no canary.
        links: label -> URL (MLflow runs, model version, Prefect run).

    """
    lines = [
        f"## Promote `{eval_summary.model_uri}` to champion?",
        "",
        f"**Offline gate:** {'PASS' if gate_verdict.passed else 'BLOCK'} "
        f"(policy {gate_verdict.policy_version}; baseline "
        f"`{gate_verdict.baseline_uri or 'none: first run'}`; "
        f"evaluation errors: {eval_summary.errors})",
        "",
    ]
    if gate_verdict.blocking_reasons:
        lines += ["**Blocking reasons:**", ""]
        lines += [f"- {r}" for r in gate_verdict.blocking_reasons]
        lines.append("")
    lines += [
        "### Per dimension (candidate − champion, 95% paired CI)",
        "",
        "| view | dimension | metric | candidate [95% CI] | champion | delta [95% CI] | n | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in gate_verdict.per_dimension:
        mark = "ok" if c.passed else "**BLOCK**"
        if c.safety:
            mark += " (safety)"
        delta = "–" if c.delta is None else f"{c.delta:+.4g}{_ci(c.delta_ci_low, c.delta_ci_high)}"
        lines.append(
            f"| {c.view} | {c.key} | {c.metric or '–'} | {_num(c.value)}{_ci(c.ci_low, c.ci_high)}"
            f" | {_num(c.champion_value)} | {delta} | {c.n if c.n is not None else '–'} | {mark} |"
        )
    lines += ["", "### Worst regressions", ""]
    worst = gate_verdict.worst_regressions(3)
    if not worst:
        lines.append("None: no dimension got worse by its point estimate.")
    for c in worst:
        assert c.delta is not None
        lines.append(
            f"- [{c.view}] **{c.key}** {c.delta:+.4g}{_ci(c.delta_ci_low, c.delta_ci_high)} "
            f"({c.direction.replace('_', ' ')}; margin {c.margin:g})"
        )
    lines += ["", "### Canary", ""]
    if canary_verdict is None:
        lines.append("No canary evidence.")
    else:
        cv = canary_verdict
        lines += [
            f"**Verdict:** {cv.decision} over {cv.duration_s / 60:.1f} min "
            f"({cv.window_start:%Y-%m-%d %H:%M} → {cv.window_end:%Y-%m-%d %H:%M} UTC); "
            f"requests: champion {cv.champion.requests}, canary {cv.canary.requests}",
            "",
            "| signal | champion | canary | difference [95% CI] | tolerated | status |",
            "|---|---|---|---|---|---|",
        ]
        for s in cv.comparisons:
            diff = "–" if s.difference is None else f"{s.difference:+.4g}"
            lines.append(
                f"| {s.signal} | {_num(s.champion)} | {_num(s.canary)} | "
                f"{diff}{_ci(s.ci_low, s.ci_high)} | {s.threshold:g} | {s.status} |"
            )
    if links:
        lines += ["", "### Links", ""]
        lines += [f"- [{label}]({url})" for label, url in links.items()]
    return "\n".join(lines) + "\n"
