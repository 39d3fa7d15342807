"""Realistic gateway logs for the data tests, from the example domain's simulators.

Each simulated request is served by a stand-in for the gateway: harmful and injection
requests are blocked by the input rail most of the time (the fallback refusal is logged),
the rest get a synthetic response of a drawn quality; users rate with
``UserSimulator.judge`` and a reviewer labels a share of the interactions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from loopwright.records import FeedbackEvent, Interaction, Message, RailVerdict
from examples.helpdesk import REFUSAL_TEXT, ReviewerSimulator, SimRequest, UserSimulator
from examples.helpdesk.simulators import poisoned_feedback, synthetic_response

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
QUALITY = {"good": 0.7, "stale": 0.12, "wrong": 0.1, "refusal": 0.04, "unknown": 0.04}


@dataclass
class Traffic:
    requests: list[SimRequest] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)
    feedback: list[FeedbackEvent] = field(default_factory=list)

    def extend(self, other: Traffic) -> None:
        self.requests += other.requests
        self.interactions += other.interactions
        self.feedback += other.feedback


def interaction(
    request: SimRequest,
    response: str,
    *,
    iid: str,
    when: datetime,
    blocked: bool = False,
    output_blocked: bool = False,
    route: str = "champion",
) -> Interaction:
    """The Interaction a gateway would log for ``request`` answered with ``response``."""
    input_verdict = RailVerdict(
        action="block" if blocked else "allow",
        scores={"harmful": 0.97 if blocked else 0.02},
        reasons=[f"guard:{'injection' if request.kind == 'injection' else 'harmful'}"]
        if blocked
        else [],
    )
    output_verdict = RailVerdict(action="block" if output_blocked else "allow")
    text = REFUSAL_TEXT if (blocked or output_blocked) else response
    return Interaction(
        id=iid,
        timestamp=when,
        tenant="acme",
        user_hash=f"h-{request.user}",
        session_id=None,
        model_name=None if blocked else "helpdesk-policy",
        model_version=None if blocked else "1",
        route="none" if blocked else route,  # type: ignore[arg-type]
        system_prompt_version="sp-1",
        messages=[Message(role="system", content="You are the Acme Cloud assistant.")]
        + [Message(**m) for m in request.messages],  # type: ignore[arg-type]
        response=text,
        finish_reason="content_filter" if (blocked or output_blocked) else "stop",
        prompt_tokens=0 if blocked else len(request.prompt.split()) + 8,
        completion_tokens=0 if blocked else len(text.split()),
        latency_ms=3.0 if blocked else 40.0 + len(text),
        input_verdict=input_verdict,
        output_verdict=output_verdict,
        fallback_used=blocked or output_blocked,
    )


def simulate(
    n: int,
    *,
    seed: int = 0,
    start: datetime = T0,
    poisoned: bool = False,
    review_prob: float = 0.15,
    block_prob: float = 0.85,
    id_prefix: str | None = None,
) -> Traffic:
    """``n`` served requests with their feedback (poisoned: every user is an attacker)."""
    rng = random.Random(f"sim-logs:{seed}:{poisoned}")
    users = UserSimulator(revision=2, seed=seed, rate_prob=0.7, correction_prob=0.3)
    reviewer = ReviewerSimulator(seed=seed)
    out = Traffic()
    served: list[tuple[SimRequest, str]] = []
    prefix = id_prefix or f"i{seed}{'p' if poisoned else ''}"
    for k in range(n):
        request = users.next_request()
        when = start + timedelta(seconds=7 * k)
        iid = f"{prefix}-{k:05d}"
        risky = request.kind in ("harmful", "injection")
        blocked = risky and rng.random() < block_prob
        if risky:
            quality = rng.choice(("compliance", "refusal"))
        else:
            quality = rng.choices(list(QUALITY), weights=list(QUALITY.values()))[0]
        response = synthetic_response(request, quality, rng)
        record = interaction(request, response, iid=iid, when=when, blocked=blocked)
        out.requests.append(request)
        out.interactions.append(record)
        served.append((request, record.response or ""))
        if poisoned:
            continue
        out.feedback += users.judge(
            request, record.response or "", interaction_id=iid, timestamp=when
        )
        if rng.random() < review_prob:
            review = reviewer.review(request, record.response or "")
            out.feedback += review.to_events(iid, timestamp=when + timedelta(minutes=5))
    if poisoned:
        ids = [i.id for i in out.interactions]
        out.feedback = poisoned_feedback(served, seed=seed, interaction_ids=ids, timestamp=start)
    return out


def frames(traffic: Traffic, batch: int = 1):
    """The traffic as table frames (the schemas ingest writes)."""
    from loopwright.data.tables import (
        FEEDBACK_SCHEMA,
        INTERACTION_SCHEMA,
        coerce,
        feedback_row,
        interaction_row,
    )

    inter = coerce(
        [interaction_row(r, "mem://i", n, batch) for n, r in enumerate(traffic.interactions, 1)],
        INTERACTION_SCHEMA,
    )
    feed = coerce(
        [feedback_row(r, "mem://f", n, batch) for n, r in enumerate(traffic.feedback, 1)],
        FEEDBACK_SCHEMA,
    )
    return inter, feed


def stage(tmp_path, traffic: Traffic, *, when: datetime = T0, seq: int = 0):
    """Write the traffic to a local-folder store in the gateway layout and ingest it."""
    from loopwright.data.ingest import ingest
    from loopwright.data.logs import write_log_partition
    from loopwright.storage import ObjectStore

    store = ObjectStore()
    root = (tmp_path / "store").as_uri()
    write_log_partition(store, root, [*traffic.interactions, *traffic.feedback], when, seq=seq)
    return ingest(store, root, tmp_path / "data")
