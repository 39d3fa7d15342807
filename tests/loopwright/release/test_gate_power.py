"""The gate is powered for its margins on the default suites (issue #20's must-show).

Synthetic per-sample scores, the evaluation's own paired bootstrap, the staged looks and
the default policy's margins, at the example domain's default suite sizes. The spread of
the paired differences (``CHURN``) is what night 1's candidate showed against v1 on the
full-size demo (docs/decisions/0001-gate-power.md), rounded up: a candidate that changes
that many answers yet is no better or worse on average must pass, and one that is worse by
twice the margin must not.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from gate_power import draw_pair, one_dimension_policy, pass_rate

from loopwright.release.gate import decide, load_gate_policy
from loopwright.release.summary import EvalSummary

# dimension -> (churn, binary). Binary metrics: share of samples whose score differs
# between the two models. Continuous ones: standard deviation of the paired difference.
# Night 1 of the full-size demo (seed 0), the larger of the raw and gateway views, rounded
# up (correctness 0.168, hallucination 0.152, harmlessness 0.129, over-refusal 0.152,
# robustness 0.186, fairness 0.188; consistency SD 0.360, helpfulness SD 0.274).
CHURN: dict[str, tuple[float, bool]] = {
    "correctness": (0.17, True),
    "hallucination": (0.16, True),
    "harmlessness": (0.13, True),
    "over_refusal": (0.16, True),
    "consistency": (0.36, False),
    "robustness": (0.19, True),
    "helpfulness": (0.28, False),
    "fairness": (0.19, True),
}
DRAWS = 200


def _suite_sizes() -> dict[str, int]:
    """Scored samples per dimension in the example domain's default suites."""
    from examples.helpdesk.generate import build_eval_suites

    sizes: Counter[str] = Counter()
    for samples in build_eval_suites(0, 1.0).values():
        for s in samples:
            if s.tags.get("swapped") not in ("none", "reference"):  # fairness references
                sizes[s.dimension] += 1
    return dict(sizes)


SIZES = _suite_sizes()
POLICY = load_gate_policy()
JUDGED = [k for k in POLICY.dimensions if "/" not in k and k in CHURN]


def test_every_judged_dimension_has_a_size_and_a_churn() -> None:
    missing = [k for k in POLICY.dimensions if "/" not in k and k not in CHURN]
    assert missing == ["regression", "gold"]  # start empty; their cases come from production
    assert all(SIZES.get(k, 0) >= POLICY.min_n for k in JUDGED)


@pytest.mark.parametrize("key", JUDGED)
def test_a_candidate_equal_to_the_champion_passes_at_the_default_suite_size(key: str) -> None:
    churn, binary = CHURN[key]
    policy = one_dimension_policy(POLICY, key)
    rate = pass_rate(policy, key, SIZES[key], 0.0, churn, binary, DRAWS)
    assert rate >= 0.9, f"{key}: n={SIZES[key]} passes an equal candidate {rate:.0%}"


@pytest.mark.parametrize("key", [k for k in JUDGED if not POLICY.dimensions[k].safety])
def test_a_regression_of_twice_the_margin_is_blocked(key: str) -> None:
    churn, binary = CHURN[key]
    margin = POLICY.dimensions[key].margin
    policy = one_dimension_policy(POLICY, key)
    # Worse on average by 2 x margin: at least that share of samples must change.
    spread = churn + 2 * margin if binary else churn
    rate = pass_rate(policy, key, SIZES[key], -2 * margin, spread, binary, DRAWS)
    assert rate <= 0.05, f"{key}: a 2x-margin regression passes {rate:.0%}"


def test_no_injected_regression_beyond_twice_the_margin_is_ever_promoted() -> None:
    """Every non-safety dimension and view regressed by twice its margin, 20 draws each.

    The whole default policy judges the summary; every other key is an equal candidate.
    """
    rng = np.random.default_rng(7)
    promoted = []
    for view in POLICY.views:
        for key in [k for k in JUDGED if not POLICY.dimensions[k].safety]:
            for draw in range(20):
                injected = (view, key, 2 * POLICY.dimensions[key].margin)
                cand, champ = _full_summaries(rng, injected=injected)
                if decide(cand, champ, POLICY).passed:
                    promoted.append((view, key, draw))
    assert promoted == []


@pytest.mark.parametrize(("drop", "at_most"), [(0.25, 0.01), (0.2, 0.05)])
def test_a_safety_drop_is_rarely_promoted(drop: float, at_most: float) -> None:
    """Safety has margin 0 and blocks a *significant* drop: the size caught depends on n.

    On the 185 harmful requests, with night 1's churn, a 0.25 drop in harmlessness passes
    under 1% of draws and a 0.2 drop under 5%; measured the same way, a 0.15 drop passed
    11% and a 0.1 drop about a third. Catching small safety drops needs a larger suite
    (the decision record).
    """
    churn, binary = CHURN["harmlessness"]
    policy = one_dimension_policy(POLICY, "harmlessness")
    rate = pass_rate(
        policy, "harmlessness", SIZES["harmlessness"], -drop, churn + 2 * drop, binary, DRAWS
    )
    assert rate <= at_most, f"a {drop} harmlessness drop passes {rate:.1%}"


def _full_summaries(
    rng: np.random.Generator, injected: tuple[str, str, float]
) -> tuple[EvalSummary, EvalSummary]:
    from gate_power import paired_stat

    views_c: dict[str, dict] = {}
    views_b: dict[str, dict] = {}
    for view in POLICY.views:
        vals_c, vals_b, paired = {}, {}, {}
        for key in JUDGED:
            churn, binary = CHURN[key]
            rule = POLICY.dimensions[key]
            harm = injected[2] if (view, key) == injected[:2] else 0.0
            spread = churn + 2 * harm if binary else churn
            champion, candidate = draw_pair(rng, SIZES[key], -harm, spread, binary)
            if rule.direction == "lower_is_better":
                champion, candidate = 1 - champion, 1 - candidate
            stat_c, stat_b, pair = paired_stat(champion, candidate)
            vals_c[key], vals_b[key], paired[key] = stat_c, stat_b, pair
        views_c[view] = {"values": vals_c, "paired": paired}
        views_b[view] = {"values": vals_b}
    cand = {"model_uri": "models:/x/2", "baseline_uri": "models:/x/1", "views": views_c}
    champ = {"model_uri": "models:/x/1", "views": views_b}
    return EvalSummary.model_validate(cand), EvalSummary.model_validate(champ)
