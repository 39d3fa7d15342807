"""The gate's power rules: floors relative to the champion, interim looks, staged shares."""

from __future__ import annotations

import pytest
from release_fixtures import champion, policy, summary

from loopwright.records import EvalSample, Message
from loopwright.release.evaluate import next_fractions
from loopwright.release.gate import GatePolicy, decide
from loopwright.release.noise import cached_noise, noise_from_runs, noise_tag
from loopwright.release.power import critical_z, non_inferiority
from loopwright.release.summary import EvalSummary


def _champion_with(values: dict[str, float]) -> EvalSummary:
    data = champion().model_dump()
    for view in data["views"].values():
        for key, value in values.items():
            view["values"][key].update(value=value, ci_low=value - 0.03, ci_high=value + 0.03)
    return EvalSummary.model_validate(data)


# ---- floors relative to the champion ----------------------------------------------------


def test_candidate_non_inferior_to_a_champion_below_the_floor_passes_that_floor() -> None:
    # Consistency on the full-size demo: v1 scored 0.447 under a 0.5 floor, so no candidate
    # that improved but stayed under 0.5 could pass. Floor 0.5 here is correctness's.
    cand = summary(values={"correctness": 0.46}, deltas={"correctness": (0.01, -0.01, 0.03)})
    verdict = decide(cand, _champion_with({"correctness": 0.45}), policy())
    assert verdict.decision == "pass", verdict.reasons
    notes = [r for r in verdict.reasons if "champion below floor" in r]
    assert len(notes) == 2 and all("0.45" in r and "0.5" in r for r in notes)


def test_relative_floor_still_blocks_a_regression_beyond_the_margin() -> None:
    cand = summary(values={"correctness": 0.38}, deltas={"correctness": (-0.07, -0.09, -0.05)})
    verdict = decide(cand, _champion_with({"correctness": 0.45}), policy())
    assert verdict.decision == "block"
    assert any("regression beyond the margin" in r for r in verdict.blocking_reasons)


def test_floor_is_absolute_when_the_champion_meets_it() -> None:
    cand = summary(values={"correctness": 0.49}, deltas={"correctness": (-0.01, -0.02, 0.0)})
    verdict = decide(cand, _champion_with({"correctness": 0.51}), policy())
    assert verdict.decision == "block"
    assert any("past the floor 0.5" in r for r in verdict.blocking_reasons)


def test_relative_floors_can_be_turned_off() -> None:
    cand = summary(values={"correctness": 0.46}, deltas={"correctness": (0.01, -0.01, 0.03)})
    strict = policy(floors_relative_to_champion=False)
    verdict = decide(cand, _champion_with({"correctness": 0.45}), strict)
    assert verdict.decision == "block"


def test_first_run_has_no_champion_to_be_relative_to() -> None:
    verdict = decide(summary(baseline=None, values={"correctness": 0.45}), None, policy())
    assert verdict.decision == "block"
    assert any("past the floor 0.5" in r for r in verdict.blocking_reasons)


# ---- interim looks ---------------------------------------------------------------------


def test_interim_look_is_stricter_and_asks_for_more_samples() -> None:
    # One-sided 95% passes this at the final look (0.01 - 1.645 * 0.0153 > -0.03), but the
    # interim critical value 3.0 does not: more samples, not a verdict.
    cand = summary(deltas={"correctness": (0.01, -0.02, 0.04)})
    assert decide(cand, champion(), policy()).decision == "pass"
    interim = decide(cand, champion(), policy(), final_look=False)
    assert interim.decision == "inconclusive"
    assert interim.inconclusive_keys() == {"correctness"}


def test_safety_lean_is_inconclusive_at_an_interim_look_and_a_note_at_the_final() -> None:
    cand = summary(deltas={"harmlessness": (-0.01, -0.03, 0.01)})
    interim = decide(cand, champion(), policy(), final_look=False)
    assert interim.decision == "inconclusive"
    assert "harmlessness" in interim.inconclusive_keys()
    final = decide(cand, champion(), policy())
    assert final.decision == "pass"
    assert any("leans worse but is not significant" in r for r in final.reasons)


def test_a_clear_safety_regression_blocks_even_at_an_interim_look() -> None:
    cand = summary(deltas={"harmlessness": (-0.1, -0.14, -0.06)})
    verdict = decide(cand, champion(), policy(), final_look=False)
    assert verdict.decision == "block"
    assert any("safety regression" in r for r in verdict.blocking_reasons)


def test_critical_values_and_outcomes() -> None:
    assert critical_z(0.95, final_look=True, interim_z=3.0) == pytest.approx(1.6449, abs=1e-4)
    assert critical_z(0.95, final_look=False, interim_z=3.0) == 3.0
    assert non_inferiority(0.0, 0.01, 500, 0.03, 1.645).outcome == "pass"
    assert non_inferiority(-0.06, 0.01, 500, 0.03, 1.645).outcome == "regression"
    straddle = non_inferiority(-0.02, 0.01, 500, 0.03, 1.645)
    assert straddle.outcome == "inconclusive"
    # sd = 0.01 * sqrt(500); resolving a distance of 0.01 at z=1.645 needs (z*sd/0.01)^2.
    assert straddle.needed_n == pytest.approx((1.645 * 0.01 * 500**0.5 / 0.01) ** 2, rel=0.01)
    assert non_inferiority(-0.03, 0.01, 500, 0.03, 1.645).needed_n is None  # on the margin


@pytest.mark.parametrize("stages", [[0.5], [0.6, 0.5, 1.0], [0.0, 1.0], [0.5, 1.2]])
def test_bad_evaluation_stages_fail_with_what_is_valid(stages: list[float]) -> None:
    with pytest.raises(ValueError, match="evaluation_stages must increase"):
        GatePolicy.model_validate({**policy().model_dump(), "evaluation_stages": stages})


# ---- staged shares ---------------------------------------------------------------------


def test_only_suites_of_inconclusive_dimensions_get_more_samples() -> None:
    fractions = {"correctness": 0.5, "harmlessness": 0.5, "consistency_paraphrase": 0.5}
    dims = {
        "correctness": "correctness",
        "harmlessness": "harmlessness",
        "consistency_paraphrase": "consistency",
    }
    out = next_fractions(fractions, dims, {"harmlessness/covered.true", "consistency"}, 1.0)
    assert out == {"correctness": 0.5, "harmlessness": 1.0, "consistency_paraphrase": 1.0}


def _sample(i: int, group: str | None) -> EvalSample:
    return EvalSample(
        id=f"s{i}",
        suite="x",
        dimension="correctness",
        messages=[Message(role="user", content=f"q{i}")],
        references=["a"],
        group=group,
    )


def test_sample_share_keeps_families_whole_nested_and_stable() -> None:
    from loopwright.evaluation.suites import sample_share

    samples = [_sample(i, f"g{i // 4}") for i in range(200)]
    half = sample_share(samples, 0.5)
    quarter = sample_share(samples, 0.25)
    assert {s.group for s in half} >= {s.group for s in quarter}
    assert len({s.group for s in half}) == 25
    by_group: dict[str | None, int] = {}
    for s in half:
        by_group[s.group] = by_group.get(s.group, 0) + 1
    assert set(by_group.values()) == {4}  # whole families only
    assert sample_share(samples, 0.5) == half  # the same every time
    assert sample_share(samples, 1.0) == samples
    assert [s.id for s in half] == sorted((s.id for s in half), key=lambda x: int(x[1:]))
    # Not simply the file's first half.
    assert {s.group for s in half} != {f"g{i}" for i in range(25)}
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sample_share(samples, 0.0)


# ---- noise -------------------------------------------------------------------------------


def test_noise_is_the_stdev_across_reruns_and_round_trips_through_a_tag() -> None:
    noise = noise_from_runs([{"a": 0.5, "b": 0.2, "c": 1.0}, {"a": 0.5, "b": 0.3}])
    assert noise == pytest.approx({"a": 0.0, "b": 0.0707107})
    tags = noise_tag("abc", noise)
    assert cached_noise(tags, "abc") == pytest.approx(noise, abs=1e-6)
    assert cached_noise(tags, "other-suites") is None
    with pytest.raises(ValueError, match="at least 2 runs"):
        noise_from_runs([{"a": 1.0}])


def test_too_few_samples_and_floors_wait_for_the_final_look() -> None:
    # Half a small suite is under min_n, and a point value past the floor on half the
    # samples may not be past it on all: neither ends a staged evaluation early.
    small = summary(n=20, paired_n=20)
    interim = decide(small, champion(), policy(), final_look=False)
    assert interim.decision == "inconclusive"
    assert any("too few samples" in r for r in interim.reasons if "inconclusive" not in r)
    assert decide(small, champion(), policy()).decision == "block"
    low = summary(values={"correctness": 0.45})
    assert decide(low, champion(), policy(), final_look=False).decision == "inconclusive"
    assert decide(low, champion(), policy()).decision == "block"


def test_suite_digest_follows_suite_and_sample_files(tmp_path) -> None:
    from loopwright.release.noise import suite_digest

    suites, data = tmp_path / "suites", tmp_path / "data"
    suites.mkdir()
    (data / "eval").mkdir(parents=True)
    for name in ("a", "b"):
        # "b" needs a guard: the digest must not need one to read it.
        scorer = "guard_safe" if name == "b" else "exact_match"
        (suites / f"{name}.yaml").write_text(
            f"name: {name}\ndimension: correctness\nsamples: eval/{name}.jsonl\n"
            f"scorers: [{{scorer: {scorer}}}]\n"
        )
        (data / "eval" / f"{name}.jsonl").write_text('{"id": "1"}\n')
    first = suite_digest(suites, data, None)
    assert suite_digest(suites, data, None) == first
    assert suite_digest(suites, data, ["a"]) != first
    (data / "eval" / "b.jsonl").write_text('{"id": "2"}\n')
    assert suite_digest(suites, data, None) != first
    assert suite_digest(suites, data, ["a"]) == suite_digest(suites, data, ["a"])
