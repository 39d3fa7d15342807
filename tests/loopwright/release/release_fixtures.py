"""Builders shared by the release tests: eval summaries, gate policies, synthetic traffic."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from loopwright.records import FeedbackEvent, Interaction, RailVerdict
from loopwright.release.gate import GatePolicy, GateVerdict
from loopwright.release.summary import EvalSummary

CAND = "models:/shop-policy/2"
CHAMP = "models:/shop-policy/1"
HI = "higher_is_better"

POLICY: dict[str, Any] = {
    "version": "test-1",
    "views": ["raw", "gateway"],
    "min_n": 50,
    "min_margin_over_noise": 2.0,
    "dimensions": {
        "correctness": {"direction": HI, "min_value": 0.5, "margin": 0.03},
        "hallucination": {"direction": "lower_is_better", "max_value": 0.3, "margin": 0.03},
        "harmlessness": {"direction": HI, "safety": True, "min_value": {"gateway": 0.9}},
        "robustness/injection": {"direction": HI, "safety": True},
        "helpfulness": {"direction": HI, "margin": 0.1},
    },
    "reward_hacking": {"reward": "helpfulness", "references": ["correctness", "hallucination"]},
}
GOOD = {
    "correctness": 0.7,
    "hallucination": 0.1,
    "harmlessness": 0.95,
    "robustness/injection": 0.9,
    "helpfulness": 1.0,
}
NON_SAFETY = ["correctness", "hallucination", "helpfulness"]
SAFETY = ["harmlessness", "robustness/injection"]
DIRECTION = {"hallucination": -1}  # +1: higher is better


def policy(**overrides: Any) -> GatePolicy:
    data = json.loads(json.dumps(POLICY))
    data.update(overrides)
    return GatePolicy.model_validate(data)


def stat(value: float, n: int = 200, metric: str = "m") -> dict[str, Any]:
    return {
        "metric": metric,
        "value": value,
        "ci_low": value - 0.03,
        "ci_high": value + 0.03,
        "n": n,
    }


def paired(delta: float, low: float, high: float, n: int = 200) -> dict[str, Any]:
    return {"metric": "m", "delta": delta, "ci_low": low, "ci_high": high, "n": n}


NEUTRAL = (0.0, -0.01, 0.01)


def summary(
    *,
    model_uri: str = CAND,
    baseline: str | None = CHAMP,
    values: dict[str, float] | None = None,
    deltas: dict[str, tuple[float, float, float]] | None = None,
    views: tuple[str, ...] = ("raw", "gateway"),
    view_values: dict[str, dict[str, float]] | None = None,
    n: int = 200,
    paired_n: int = 200,
    noise: float | None = 0.005,
    errors: int = 0,
) -> EvalSummary:
    values = {**GOOD, **(values or {})}
    deltas = {k: NEUTRAL for k in GOOD} | (deltas or {})
    out: dict[str, Any] = {}
    for view in views:
        vals = {**values, **((view_values or {}).get(view, {}))}
        out[view] = {
            "values": {k: stat(v, n) for k, v in vals.items()},
            "paired": {k: paired(*d, n=paired_n) for k, d in deltas.items()} if baseline else {},
            "noise": {k: noise for k in vals} if noise is not None else {},
        }
    return EvalSummary.model_validate(
        {"model_uri": model_uri, "baseline_uri": baseline, "views": out, "errors": errors}
    )


def champion() -> EvalSummary:
    return summary(model_uri=CHAMP, baseline=None)


def blocking_keys(verdict: GateVerdict) -> set[str]:
    return {f"{c.view}:{c.key}" for c in verdict.per_dimension if not c.passed}


CANARY_T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CANARY_NOW = CANARY_T0 + timedelta(minutes=30)


def arm(
    route: str,
    n: int,
    *,
    seed: int,
    version: str | None = None,
    block: float = 0.02,
    fallback: float = 0.02,
    error: float = 0.0,
    negative: float = 0.05,
    latency_ms: float = 100.0,
    reward: float | None = 0.5,
    start: datetime = CANARY_T0,
    span: timedelta = timedelta(minutes=29),
) -> tuple[list[Interaction], list[FeedbackEvent]]:
    """Seeded synthetic traffic for one arm with the given true rates."""
    rng = random.Random(seed)
    version = version or ("1" if route == "champion" else "2")
    interactions, feedback = [], []
    for i in range(n):
        iid = f"{route}-{seed}-{i}"
        at = start + span * (i / max(n - 1, 1))
        is_error = rng.random() < error
        scores = {"reward": rng.gauss(reward, 0.2)} if reward is not None else {}
        interactions.append(
            Interaction(
                id=iid,
                timestamp=at,
                tenant="acme",
                user_hash=f"u{rng.randrange(50)}",
                route=route,  # type: ignore[arg-type]
                model_name="shop-policy",
                model_version=version,
                latency_ms=rng.lognormvariate(0, 0.3) * latency_ms,
                status_code=503 if is_error else 200,
                output_verdict=RailVerdict(
                    action="block" if rng.random() < block else "allow", scores=scores
                ),
                fallback_used=rng.random() < fallback,
            )
        )
        if rng.random() < negative:
            feedback.append(
                FeedbackEvent(
                    id=f"fb-{iid}",
                    interaction_id=iid,
                    kind="rating",
                    value=-1,
                    source="user",
                    author="sim",
                    timestamp=at + timedelta(seconds=5),
                )
            )
        elif rng.random() < 0.1:
            feedback.append(
                FeedbackEvent(
                    id=f"fb-{iid}",
                    interaction_id=iid,
                    kind="rating",
                    value=1,
                    source="user",
                    author="sim",
                    timestamp=at + timedelta(seconds=5),
                )
            )
    return interactions, feedback


def logs(
    champion: dict[str, Any] | None = None, canary: dict[str, Any] | None = None, n: int = 400
) -> tuple[list[Interaction], list[FeedbackEvent]]:
    ci, cf = arm("champion", n, seed=1, **(champion or {}))
    ki, kf = arm("canary", n, seed=2, **(canary or {}))
    return ci + ki, cf + kf
