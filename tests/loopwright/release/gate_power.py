"""Synthetic paired evaluations for the gate's power tests (per-sample scores, real stats).

Each draw makes per-sample scores for a champion and a candidate on ``n`` samples, with a
chosen true difference and a chosen churn (the share of samples whose score differs
between the two models), computes the paired bootstrap CI with the evaluation's own
``paired_bootstrap``, and asks the gate (``decide``) as the staged evaluation would: first
on the first share of the samples (an interim look), then on all of them.
"""

from __future__ import annotations

import numpy as np

from loopwright.evaluation.stats import paired_bootstrap
from loopwright.release.gate import DimensionRule, GatePolicy, decide
from loopwright.release.summary import EvalSummary

RESAMPLES = 500


def draw_pair(
    rng: np.random.Generator, n: int, improvement: float, churn: float, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (champion, candidate) scores; ``improvement`` in higher-is-better units.

    Binary metrics: the champion's score is 1 on half the samples; the candidate differs on
    a ``churn`` share, flipping up more often than down by ``improvement``. Continuous
    metrics (reward scores): the candidate is the champion plus normal noise with standard
    deviation ``churn`` and mean ``improvement``.
    """
    if binary:
        champion = (rng.random(n) < 0.5).astype(float)
        up, down = (churn + improvement) / 2, (churn - improvement) / 2
        u = rng.random(n)
        delta = np.where(u < up, 1.0, np.where(u < up + down, -1.0, 0.0))
        candidate = champion + delta  # scores may leave [0, 1]; only differences matter
        return champion, candidate
    champion = rng.normal(0.5, 0.1, n)
    return champion, champion + rng.normal(improvement, churn, n)


def paired_stat(champion: np.ndarray, candidate: np.ndarray) -> tuple[dict, dict, dict]:
    """(candidate value, champion value, paired delta) entries of an eval summary view."""
    ci = paired_bootstrap(candidate.tolist(), champion.tolist(), resamples=RESAMPLES, seed=1)
    n = len(champion)

    def stat(values: np.ndarray) -> dict:
        mean = float(values.mean())
        return {"metric": "m", "value": mean, "ci_low": mean, "ci_high": mean, "n": n}

    delta = float((candidate - champion).mean())
    pair = {"metric": "m", "delta": delta, "ci_low": ci.low, "ci_high": ci.high, "n": n}
    return stat(candidate), stat(champion), pair


def _summary(key: str, champion: np.ndarray, candidate: np.ndarray) -> tuple[dict, dict]:
    cand_stat, champ_stat, pair = paired_stat(champion, candidate)
    cand = {
        "model_uri": "models:/x/2",
        "baseline_uri": "models:/x/1",
        "views": {"raw": {"values": {key: cand_stat}, "paired": {key: pair}}},
    }
    champ = {"model_uri": "models:/x/1", "views": {"raw": {"values": {key: champ_stat}}}}
    return cand, champ


def one_dimension_policy(base: GatePolicy, key: str) -> GatePolicy:
    """``base`` judging only ``key`` in the raw view, without floors or a noise check."""
    rule = base.dimensions[key]
    plain = DimensionRule(
        direction="higher_is_better", safety=rule.safety, margin=rule.margin, min_n=1
    )
    return base.model_copy(
        update={
            "views": ["raw"],
            "dimensions": {key: plain},
            "reward_hacking": None,
            "min_margin_over_noise": None,
        }
    )


def staged_decision(
    policy: GatePolicy, key: str, champion: np.ndarray, candidate: np.ndarray
) -> str:
    """The gate's final decision after the staged looks (interim shares are prefixes)."""
    stages = policy.evaluation_stages
    for i, share in enumerate(stages):
        final = i == len(stages) - 1
        m = len(champion) if final else max(1, int(np.ceil(share * len(champion))))
        cand, champ = _summary(key, champion[:m], candidate[:m])
        verdict = decide(
            EvalSummary.model_validate(cand),
            EvalSummary.model_validate(champ),
            policy,
            final_look=final,
        )
        if final or verdict.decision != "inconclusive":
            return verdict.decision
    raise AssertionError("unreachable")


def pass_rate(
    policy: GatePolicy,
    key: str,
    n: int,
    improvement: float,
    churn: float,
    binary: bool,
    draws: int,
    seed: int = 0,
) -> float:
    """Share of ``draws`` seeded synthetic evaluations the staged gate passes."""
    rng = np.random.default_rng(seed)
    passed = 0
    for _ in range(draws):
        champion, candidate = draw_pair(rng, n, improvement, churn, binary)
        passed += staged_decision(policy, key, champion, candidate) == "pass"
    return passed / draws
