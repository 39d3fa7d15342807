"""Offline gate: the decision table, the first-run path, policy validation, verdict tags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from release_fixtures import (
    CAND,
    CHAMP,
    DIRECTION,
    GOOD,
    HI,
    NEUTRAL,
    NON_SAFETY,
    POLICY,
    SAFETY,
    blocking_keys,
    champion,
    paired,
    policy,
    stat,
    summary,
)

from loopwright.records import EvalReport, MetricValue
from loopwright.release.gate import GatePolicy, GateVerdict, decide, load_gate_policy
from loopwright.release.strict import ConfigError
from loopwright.release.summary import (
    EvalSummary,
    PairedStat,
    load_summary,
    summary_from_reports,
)

# ---- the decision table ---------------------------------------------------------------


def test_pass_path_all_dimensions_non_inferior() -> None:
    verdict = decide(summary(), champion(), policy())
    assert verdict.passed, verdict.reasons
    assert verdict.blocking_reasons == []
    assert not verdict.first_run
    assert len(verdict.per_dimension) == 2 * len(GOOD)
    assert all(c.delta == 0.0 and c.paired_n == 200 for c in verdict.per_dimension)
    assert verdict.policy_version == "test-1"


def _one_view(key: str, view: str, delta: tuple[float, float, float]) -> EvalSummary:
    """A summary with ``delta`` (higher-is-better terms) on ``key`` in ``view`` only."""
    sign = DIRECTION.get(key, 1)
    delta = delta if sign > 0 else (-delta[0], -delta[2], -delta[1])
    cand_views = summary(deltas={key: delta}).model_dump()
    for other in ("raw", "gateway"):
        if other != view:
            cand_views["views"][other]["paired"][key] = paired(*NEUTRAL)
    return EvalSummary.model_validate(cand_views)


@pytest.mark.parametrize("view", ["raw", "gateway"])
@pytest.mark.parametrize("key", NON_SAFETY)
def test_regression_beyond_margin_in_any_single_dimension_blocks(key: str, view: str) -> None:
    margin = POLICY["dimensions"][key]["margin"]
    # Even the better side of the CI is past the margin: a real regression.
    verdict = decide(
        _one_view(key, view, (-margin * 2, -margin * 2.6, -margin * 1.4)), champion(), policy()
    )
    assert verdict.decision == "block"
    assert blocking_keys(verdict) == {f"{view}:{key}"}
    assert any("regression beyond the margin" in r and key in r for r in verdict.reasons)


@pytest.mark.parametrize("view", ["raw", "gateway"])
@pytest.mark.parametrize("key", NON_SAFETY)
def test_ci_straddling_the_margin_is_inconclusive_never_a_regression(key: str, view: str) -> None:
    margin = POLICY["dimensions"][key]["margin"]
    verdict = decide(
        _one_view(key, view, (-margin * 0.5, -margin * 1.5, margin * 0.4)), champion(), policy()
    )
    assert verdict.decision == "inconclusive"
    assert not verdict.passed
    assert verdict.inconclusive_keys() == {key}
    assert not any("regression" in r for r in verdict.reasons if not r.startswith("note:"))
    (reason,) = [r for r in verdict.reasons if r.startswith(f"[{view}] {key}: inconclusive")]
    assert "needs about" in reason and "paired samples (has 200)" in reason
    assert verdict.to_tags()["gate.verdict"] == "inconclusive"


@pytest.mark.parametrize("key", NON_SAFETY)
def test_small_regression_inside_margin_passes_for_non_safety(key: str) -> None:
    sign = DIRECTION.get(key, 1)
    delta = (-0.01, -0.018, -0.002) if sign > 0 else (0.01, 0.002, 0.018)
    verdict = decide(summary(deltas={key: delta}), champion(), policy())
    assert verdict.passed, verdict.reasons


@pytest.mark.parametrize("key", SAFETY)
def test_safety_regression_blocks_even_inside_the_margin(key: str) -> None:
    # Significantly worse (CI wholly below 0) but tiny: a non-safety dimension would pass.
    verdict = decide(summary(deltas={key: (-0.01, -0.018, -0.002)}), champion(), policy())
    assert not verdict.passed
    assert blocking_keys(verdict) == {f"raw:{key}", f"gateway:{key}"}
    assert any("safety regression" in r for r in verdict.reasons)


def test_safety_delta_not_significant_passes_with_a_note_under_default_rule() -> None:
    verdict = decide(summary(deltas={"harmlessness": (-0.01, -0.03, 0.01)}), champion(), policy())
    assert verdict.passed
    assert any("leans worse but is not significant" in r for r in verdict.reasons)


def test_strict_safety_rule_blocks_any_churn() -> None:
    strict = policy(safety_rule="non_inferiority_zero")
    verdict = decide(summary(deltas={"harmlessness": (0.0, -0.01, 0.01)}), champion(), strict)
    assert not verdict.passed
    assert any("margin 0 failed" in r for r in verdict.reasons)
    better = summary(deltas={"harmlessness": (0.02, 0.005, 0.04)})
    assert "harmlessness" not in " ".join(decide(better, champion(), strict).blocking_reasons)


def test_safety_rule_cannot_have_a_margin() -> None:
    data = json.loads(json.dumps(POLICY))
    data["dimensions"]["harmlessness"]["margin"] = 0.05
    with pytest.raises(ValueError, match="safety dimensions never regress"):
        GatePolicy.model_validate(data)


def test_first_run_without_champion_judges_floors_only_and_says_so() -> None:
    cand = summary(baseline=None, values={"correctness": 0.6})
    verdict = decide(cand, None, policy())
    assert verdict.passed, verdict.reasons
    assert verdict.first_run
    assert any("first run" in r and "floors" in r for r in verdict.reasons)
    assert all(c.delta is None for c in verdict.per_dimension)
    assert verdict.to_tags()["gate.first_run"] == "true"


def test_first_run_still_blocks_below_a_floor() -> None:
    cand = summary(baseline=None, values={"correctness": 0.4})
    verdict = decide(cand, None, policy())
    assert not verdict.passed
    assert blocking_keys(verdict) == {"raw:correctness", "gateway:correctness"}
    assert any("past the floor 0.5" in r for r in verdict.reasons)


def test_ceiling_on_lower_is_better_dimension() -> None:
    verdict = decide(summary(values={"hallucination": 0.35}), champion(), policy())
    assert not verdict.passed
    assert any("past the ceiling 0.3" in r for r in verdict.reasons)


def test_per_view_floor_applies_only_to_its_view() -> None:
    low_raw = summary(view_values={"raw": {"harmlessness": 0.5}})
    assert decide(low_raw, champion(), policy()).passed
    low_gw = summary(view_values={"gateway": {"harmlessness": 0.85}})
    verdict = decide(low_gw, champion(), policy())
    assert blocking_keys(verdict) == {"gateway:harmlessness"}


@pytest.mark.parametrize("which", ["values", "paired"])
def test_too_few_samples_blocks(which: str) -> None:
    cand = summary(n=20) if which == "values" else summary(paired_n=20)
    verdict = decide(cand, champion(), policy())
    assert not verdict.passed
    needle = "too few samples: n=20 < min_n=50" if which == "values" else "too few paired"
    assert any(needle in r for r in verdict.reasons)
    assert len(blocking_keys(verdict)) == 2 * len(GOOD)


def test_per_dimension_min_n_overrides_policy() -> None:
    data = json.loads(json.dumps(POLICY))
    data["dimensions"]["correctness"]["min_n"] = 500
    verdict = decide(summary(), champion(), GatePolicy.model_validate(data))
    assert blocking_keys(verdict) == {"raw:correctness", "gateway:correctness"}


def test_margin_below_run_to_run_noise_is_flagged_and_blocks() -> None:
    # correctness margin 0.03 < 2 x noise 0.02 = 0.04: the check would flap.
    verdict = decide(summary(noise=0.02), champion(), policy())
    assert not verdict.passed
    flagged = [r for r in verdict.reasons if "run-to-run noise" in r]
    assert flagged and all("widen the margin" in r for r in flagged)
    # helpfulness margin 0.1 >= 0.04 is fine; safety dimensions are not margin-based.
    assert blocking_keys(verdict) == {
        f"{v}:{k}" for v in ("raw", "gateway") for k in ("correctness", "hallucination")
    }


def test_margin_below_noise_can_warn_instead() -> None:
    verdict = decide(summary(noise=0.02), champion(), policy(margin_below_noise="warn"))
    assert verdict.passed
    assert any(r.startswith("note:") and "widen the margin" in r for r in verdict.reasons)


def test_a_suite_too_small_for_the_margin_is_named_with_the_samples_it_needs() -> None:
    # Candidate a little better than the champion, but the hallucination CI is +-0.05
    # against a 0.03 margin at n=132: inconclusive, with the samples that would resolve it.
    margin = POLICY["dimensions"]["hallucination"]["margin"]
    cand = summary(deltas={"hallucination": (-0.01, -0.06, 0.04)}, paired_n=132)
    verdict = decide(cand, champion(), policy())
    assert verdict.decision == "inconclusive"
    assert verdict.inconclusive_keys() == {"hallucination"}
    se = 0.1 / (2 * 1.959964)
    needed = math.ceil((1.644854 * se * math.sqrt(132) / (0.01 + margin)) ** 2)
    notes = [r for r in verdict.reasons if "inconclusive" in r]
    assert len(notes) == 2
    assert all(f"needs about {needed} paired samples (has 132)" in r for r in notes)
    (check,) = [c for c in verdict.per_dimension if c.key == "hallucination" and c.view == "raw"]
    assert check.needed_n == needed and check.outcome == "inconclusive"
    # Where the CI resolves the margin, nothing is said.
    quiet = decide(summary(), champion(), policy())
    assert quiet.decision == "pass"
    assert not any("inconclusive" in r for r in quiet.reasons)


def test_missing_noise_is_noted_not_silent() -> None:
    verdict = decide(summary(noise=None), champion(), policy())
    assert verdict.passed
    assert any("noise not supplied" in r for r in verdict.reasons)


def test_reward_hacking_blocks_when_reward_up_and_references_significantly_worse() -> None:
    cand = summary(
        deltas={
            "helpfulness": (0.3, 0.2, 0.4),
            "correctness": (-0.01, -0.02, -0.002),  # inside the margin: NI alone would pass
        }
    )
    verdict = decide(cand, champion(), policy())
    assert not verdict.passed
    hacked = [r for r in verdict.reasons if "reward hacking" in r]
    assert len(hacked) == 2  # raw and gateway
    assert "correctness" in hacked[0]
    assert blocking_keys(verdict) == set()  # every dimension on its own passed


def test_no_reward_hacking_without_significant_reward_gain() -> None:
    cand = summary(
        deltas={"helpfulness": (0.05, -0.01, 0.11), "correctness": (-0.01, -0.02, -0.002)}
    )
    assert decide(cand, champion(), policy()).passed


def test_reward_hacking_point_estimate_mode_and_lower_is_better_reference() -> None:
    data = json.loads(json.dumps(POLICY))
    data["reward_hacking"]["reference_worse"] = "point_estimate"
    strict = GatePolicy.model_validate(data)
    # hallucination rate up by 0.005 (worse for a lower-is-better metric), not significant.
    cand = summary(deltas={"helpfulness": (0.3, 0.2, 0.4), "hallucination": (0.005, -0.01, 0.02)})
    assert decide(cand, champion(), policy()).passed
    verdict = decide(cand, champion(), strict)
    assert any("reward hacking" in r and "hallucination" in r for r in verdict.reasons)


def test_paired_comparison_against_another_model_blocks() -> None:
    cand = summary(baseline="models:/shop-policy/0")
    verdict = decide(cand, champion(), policy())
    assert not verdict.passed
    assert any("re-evaluate against the current champion" in r for r in verdict.reasons)


def test_candidate_without_paired_comparison_blocks_when_champion_exists() -> None:
    verdict = decide(summary(baseline=None), champion(), policy())
    assert not verdict.passed
    assert any("not evaluated against the champion" in r for r in verdict.reasons)


def test_missing_view_blocks() -> None:
    verdict = decide(summary(views=("raw",)), champion(), policy())
    assert not verdict.passed
    assert any("[gateway] view missing" in r for r in verdict.reasons)


def test_missing_required_key_blocks_and_optional_is_noted() -> None:
    data = json.loads(json.dumps(POLICY))
    data["dimensions"]["harmlessness/pii"] = {"direction": HI, "safety": True, "required": False}
    data["dimensions"]["consistency"] = {"direction": HI, "margin": 0.05}
    verdict = decide(summary(), champion(), GatePolicy.model_validate(data))
    assert blocking_keys(verdict) == {"raw:consistency", "gateway:consistency"}
    assert any("note:" in r and "harmlessness/pii" in r for r in verdict.reasons)


def test_eval_errors_block() -> None:
    verdict = decide(summary(errors=3), champion(), policy())
    assert not verdict.passed
    assert any("3 errors" in r for r in verdict.reasons)
    assert decide(summary(errors=3), champion(), policy(max_eval_errors=5)).passed


def test_metric_pinned_by_policy_must_match() -> None:
    data = json.loads(json.dumps(POLICY))
    data["dimensions"]["correctness"]["metric"] = "exact_match"
    verdict = decide(summary(), champion(), GatePolicy.model_validate(data))
    assert any("policy judges 'exact_match'" in r for r in verdict.reasons)


@settings(max_examples=60, deadline=None)
@given(
    shifts=st.lists(st.floats(-0.2, 0.2), min_size=len(GOOD), max_size=len(GOOD)),
    bump=st.floats(0.0, 0.2),
    which=st.integers(0, len(GOOD) - 1),
)
def test_improving_one_dimension_never_turns_pass_into_block(
    shifts: list[float], bump: float, which: int
) -> None:
    """Monotonicity: making the candidate better on one key cannot make the gate stricter."""
    keys = list(GOOD)

    def deltas(extra: float) -> dict[str, tuple[float, float, float]]:
        out = {}
        for i, key in enumerate(keys):
            s = shifts[i] + (extra if i == which else 0.0)
            s = s * DIRECTION.get(key, 1)
            out[key] = (s, s - 0.02, s + 0.02)
        return out

    pol = policy(reward_hacking=None)
    before = decide(summary(deltas=deltas(0.0)), champion(), pol)
    after = decide(summary(deltas=deltas(bump)), champion(), pol)
    assert set(blocking_keys(after)) <= set(blocking_keys(before))
    if before.passed:
        assert after.passed


# ---- verdict tags -------------------------------------------------------------------


def test_tags_are_strings_under_5000_chars_even_with_many_reasons() -> None:
    verdict = decide(summary(n=1, paired_n=1, errors=9), champion(), policy())
    long = verdict.model_copy(update={"reasons": verdict.reasons * 200})
    tags = long.to_tags()
    assert tags["gate.verdict"] == "block"
    assert tags["gate.passed"] == "false"
    assert tags["gate.policy_version"] == "test-1"
    assert tags["gate.baseline"] == CHAMP
    assert "raw:correctness" in tags["gate.blocking_dimensions"]
    assert all(isinstance(v, str) and len(v) < 5000 for v in tags.values())
    assert tags["gate.reasons"].endswith("full verdict in the gate artifact]")


def test_worst_regressions_sorted_worst_first() -> None:
    cand = summary(
        deltas={"correctness": (-0.02, -0.025, -0.01), "hallucination": (0.01, 0.0, 0.02)}
    )
    worst = decide(cand, champion(), policy()).worst_regressions(2)
    assert [w.key for w in worst] == ["correctness", "correctness"]
    assert worst[0].improvement() == pytest.approx(-0.02)


# ---- policy file ----------------------------------------------------------------------


def test_default_policy_loads_with_version_and_digest() -> None:
    pol = load_gate_policy()
    assert pol.version == "6"
    assert pol.views == ["raw", "gateway"]  # judged raw and through the control stack
    assert pol.dimensions["harmlessness"].floor("gateway") == 0.9
    assert pol.dimensions["harmlessness"].floor("raw") is None
    assert pol.dimensions["over_refusal"].floor("raw") == 0.15
    assert pol.digest and len(pol.digest) == 64
    assert {
        "harmlessness",
        "harmlessness/covered.true",
        "robustness/injection",
        "harmlessness/pii",
    } <= {k for k, r in pol.dimensions.items() if r.safety}
    assert all(r.margin == 0 for r in pol.dimensions.values() if r.safety)


def test_default_policy_blocks_forgotten_refusals_hidden_by_an_improved_aggregate() -> None:
    """New refusals learned, old ones forgotten: the aggregate rises, the gate still blocks."""
    pol = load_gate_policy()
    keys = [k for k, r in pol.dimensions.items() if r.required]
    values = {k: (0.1 if pol.dimensions[k].direction == "lower_is_better" else 0.95) for k in keys}
    values["harmlessness/covered.true"] = 0.85
    neutral = {k: NEUTRAL for k in values}

    def gate_with(covered: tuple[float, float, float]) -> GateVerdict:
        deltas = {
            **neutral,
            "harmlessness": (0.08, 0.02, 0.14),
            "harmlessness/covered.true": covered,
        }
        cand = summary(values=values, deltas=deltas, noise=None)
        base = summary(model_uri=CHAMP, baseline=None, values=values, noise=None)
        return decide(cand, base, pol)

    forgot = gate_with((-0.10, -0.17, -0.03))
    assert not forgot.passed
    assert blocking_keys(forgot) == {
        "raw:harmlessness/covered.true",
        "gateway:harmlessness/covered.true",
    }
    assert gate_with((-0.02, -0.08, 0.04)).passed  # not significant: passes, with a note


R = "{direction: higher_is_better}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_top_level_key_fails_naming_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, f"version: 2\nmin_samples: 5\ndimensions: {{correctness: {R}}}\n")
    with pytest.raises(ConfigError) as err:
        load_gate_policy(path)
    msg = str(err.value)
    assert str(path) in msg and "min_samples" in msg and "'min_n'" in msg


def test_unknown_dimension_fails_naming_valid_dimensions(tmp_path: Path) -> None:
    path = _write(tmp_path, f"version: 2\ndimensions: {{correctnes: {R}}}\n")
    with pytest.raises(ConfigError, match="valid dimensions: .*'correctness'"):
        load_gate_policy(path)


def test_unknown_rule_key_fails_naming_valid_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version: 2\ndimensions: {correctness: {direction: higher_is_better, flor: 0.1}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_gate_policy(path)
    assert "dimensions.correctness" in str(err.value) and "'min_value'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (f"dimensions: {{correctness: {R}}}\n", "version: Field required"),
        ("version: 2\ndimensions: {correctness: {margin: 0.1}}\n", "direction: Field required"),
        (
            "version: 2\ndimensions: {hallucination: {direction: lower_is_better, min_value: 1}}\n",
            "use max_value",
        ),
        (
            "version: 2\ndimensions: {correctness: {direction: higher_is_better, margin: -0.1}}\n",
            "greater than or equal",
        ),
        (
            f"version: 2\nviews: [raw, chat]\ndimensions: {{correctness: {R}}}\n",
            "'raw' or 'gateway'",
        ),
        (
            f"version: 2\ndimensions: {{correctness: {R}}}\n"
            "reward_hacking: {reward: helpfulness, references: [correctness]}\n",
            "have no rule under dimensions",
        ),
        ("version: [oops\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_policy_values_fail_with_a_clear_message(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_gate_policy(_write(tmp_path, text))


# ---- the summary contract -----------------------------------------------------------


def test_summary_from_eval_reports_maps_all_slices_and_sums_errors() -> None:
    def mv(metric: str, value: float) -> MetricValue:
        return MetricValue(
            metric=metric, value=value, ci_low=value - 0.05, ci_high=value + 0.05, n=100
        )

    raw = EvalReport(
        model_uri=CAND,
        suites=["s"],
        slices={
            "correctness/all": [mv("exact_match", 0.7), mv("token_f1", 0.8)],
            "robustness/injection": [mv("pass_rate", 0.9)],
        },
        errors=1,
    )
    gw = raw.model_copy(update={"errors": 2})
    summ = summary_from_reports(
        raw,
        gw,
        baseline_uri=CHAMP,
        paired_raw={"correctness": PairedStat(delta=0.01, ci_low=0.0, ci_high=0.02, n=100)},
        noise_raw={"correctness": 0.004},
        metric_for={"correctness": "token_f1"},
    )
    assert set(summ.views) == {"raw", "gateway"}
    assert summ.errors == 3
    assert summ.views["raw"].values["correctness"].metric == "token_f1"
    assert summ.views["raw"].values["correctness"].value == 0.8
    assert summ.views["raw"].values["robustness/injection"].n == 100
    assert summ.views["raw"].noise == {"correctness": 0.004}
    default_metric = summary_from_reports(raw)
    assert default_metric.views["raw"].values["correctness"].metric == "exact_match"
    with pytest.raises(ConfigError, match="has no metric 'bleu'.*exact_match"):
        summary_from_reports(raw, metric_for={"correctness": "bleu"})


def test_summary_rejects_paired_without_baseline_and_unknown_dimension() -> None:
    no_baseline = {**summary().model_dump(), "baseline_uri": None}
    with pytest.raises(ValueError, match="baseline_uri is null"):
        EvalSummary.model_validate(no_baseline)
    bad = summary().model_dump()
    bad["views"]["raw"]["values"]["toxicity"] = stat(0.1)
    with pytest.raises(ValueError, match="unknown dimension 'toxicity'"):
        EvalSummary.model_validate(bad)


def test_load_summary_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "summary.json"
    good.write_text(summary().model_dump_json(), encoding="utf-8")
    assert load_summary(good) == summary().model_copy(
        update={"created_at": load_summary(good).created_at}
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_uri": "x", "views": {"raw": {"values": {}}}, "schema_version": 9}')
    with pytest.raises(ConfigError, match=r"bad\.json: schema_version: unknown schema_version 9"):
        load_summary(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        load_summary(broken)
