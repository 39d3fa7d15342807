"""The online evaluation's pure core: sampling, drift statistic, per-version counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from loopwright.config import ConfigError, load_settings
from loopwright.drift import drift_stat, population_stability_index
from loopwright.online_eval import OnlineEvalConfig, evaluate_window, sample_per_version
from loopwright.records import FeedbackEvent, Interaction, Message, RailVerdict

T = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _it(
    i: int,
    version: str | None = "1",
    route: str = "champion",
    *,
    prompt: str = "how do I reset my password?",
    response: str = "Open settings and choose reset.",
    model: str | None = "app-policy",
    when: datetime = T,
    output: RailVerdict | None = None,
    fallback: bool = False,
    context: tuple[str, ...] = (),
    blocked_input: bool = False,
) -> Interaction:
    return Interaction(
        id=f"i{i}",
        timestamp=when,
        tenant="t",
        user_hash=f"u{i}",
        model_name=None if version is None else model,
        model_version=version,
        route=route if version is not None else "none",  # type: ignore[arg-type]
        messages=[Message(role="user", content=prompt)],
        response=response,
        retrieved_context_ids=list(context),
        latency_ms=10.0 + i,
        input_verdict=RailVerdict(action="block" if blocked_input else "allow"),
        output_verdict=output or RailVerdict(),
        fallback_used=fallback or blocked_input,
    )


def _fb(i: int, interaction: str, kind: str, value: object) -> FeedbackEvent:
    return FeedbackEvent(
        id=f"f{i}",
        interaction_id=interaction,
        kind=kind,  # type: ignore[arg-type]
        value=value,
        source="user",
        author="u",
        timestamp=T,
    )


class KeywordGuard:
    """A guard that calls a text harmful when it mentions a weapon (deterministic)."""

    thresholds = {"harmful": 0.5, "injection": 0.5}

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        out = []
        for text in texts:
            harmful = 0.9 if "weapon" in text else 0.05
            out.append({"benign": 1 - harmful, "harmful": harmful, "injection": 0.0})
        return out


class LengthReward:
    """Reward = answer length in words (higher is better), deterministic."""

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(len(r.split())) for r in responses]


def test_sampling_is_capped_per_version_and_arm_seeded_and_order_free():
    items = [_it(i, "1", "champion", when=T + timedelta(seconds=i)) for i in range(50)]
    items += [_it(100 + i, "2", "canary", when=T + timedelta(seconds=i)) for i in range(7)]
    items += [_it(200 + i, "2", "champion", when=T + timedelta(seconds=i)) for i in range(30)]
    items.append(_it(300, None))  # unrouted: never sampled

    first = sample_per_version(items, 10, seed=3)
    assert {v: len(s) for v, s in first.items()} == {"1": 10, "2": 7 + 10}
    again = sample_per_version(list(reversed(items)), 10, seed=3)
    assert {v: [i.id for i in s] for v, s in first.items()} == {
        v: [i.id for i in s] for v, s in again.items()
    }
    other = sample_per_version(items, 10, seed=4)
    assert [i.id for i in other["1"]] != [i.id for i in first["1"]]
    # A version's sample does not depend on which other versions served.
    alone = sample_per_version([i for i in items if i.model_version == "1"], 10, seed=3)
    assert [i.id for i in alone["1"]] == [i.id for i in first["1"]]
    assert len({i.id for i in first["1"]}) == 10  # without replacement


def test_drift_detects_a_shifted_distribution_and_not_an_unshifted_one():
    rng = np.random.default_rng(0)
    reference = rng.normal(80, 20, 1000)
    same = drift_stat("prompt_chars", reference, rng.normal(80, 20, 200))
    shifted = drift_stat("prompt_chars", reference, rng.normal(110, 20, 200))
    assert same is not None and shifted is not None
    assert not same.drifted and same.psi < 0.1 and same.ks_pvalue > 0.01
    assert shifted.drifted and shifted.psi > 0.5 and shifted.ks_pvalue < 1e-6
    # Small samples: PSI alone is biased upwards; the KS test keeps it from calling drift.
    small = [drift_stat("x", reference, rng.normal(80, 20, 25)) for _ in range(20)]
    assert all(s is not None for s in small)
    assert sum(s.psi >= 0.2 for s in small if s) >= 10
    assert sum(s.drifted for s in small if s) <= 1
    assert drift_stat("x", reference, rng.normal(80, 20, 5)) is None  # too few values


def test_psi_is_zero_for_identical_distributions_and_finite_with_empty_bins():
    values = np.arange(100, dtype=float)
    assert population_stability_index(values, values, 10) == pytest.approx(0.0, abs=1e-12)
    far = population_stability_index(values, values + 1000, 10)
    assert np.isfinite(far) and far > 1.0
    ties = np.zeros(50)  # one value only: every quantile edge is the same
    assert np.isfinite(population_stability_index(ties, np.ones(20), 10))


def test_window_counts_add_up_and_figures_are_per_version():
    facts = {"k1": "The Pro plan costs $20 per month."}
    items = [
        _it(0, "1", response="It costs $20.", context=("k1",)),
        _it(1, "1", response="It costs $35.", context=("k1",)),  # unsupported figure
        _it(2, "1", response="Here is a weapon guide."),  # served, harmful by the guard
        _it(
            3,
            "1",
            response="Sorry, I can't share that answer.",
            fallback=True,
            output=RailVerdict(action="block", reasons=["guard:harmful_response"]),
        ),
        _it(4, "2", "canary", response="Open settings, then security, then reset."),
        _it(5, "2", "canary", response="Model error fallback", fallback=True),
        _it(6, None, blocked_input=True),  # unrouted input block
        _it(7, "9", model="other-policy"),  # another app's record in the same bucket
        _it(8, "1", when=T - timedelta(hours=2)),  # before the window
    ]
    feedback = [
        _fb(0, "i0", "rating", 1),
        _fb(1, "i1", "rating", -1),
        _fb(2, "i1", "correction", "It costs $20."),
        _fb(3, "i4", "rating", -1),
        _fb(4, "i7", "rating", -1),  # other app: unmatched
    ]
    result = evaluate_window(
        items,
        feedback,
        app="app",
        start=T - timedelta(hours=1),
        end=T + timedelta(minutes=1),
        config=OnlineEvalConfig(samples_per_version=3, min_drift_samples=2),
        guard=KeywordGuard(),
        reward=LengthReward(),
        facts=facts,
        reference_prompts=["how do I reset my password?"] * 30,
        reference="test",
    )
    v1, v2 = result.versions["1"], result.versions["2"]
    assert list(result.versions) == ["1", "2"]
    assert (result.interactions, result.unrouted, result.other_apps) == (7, 1, 1)
    assert result.out_of_window == 1 and result.feedback_used == 4
    assert result.interactions == v1.total + v2.total + result.unrouted
    assert (v1.total, v1.sampled, v1.routes) == (4, 3, {"champion": 4})
    assert (v2.total, v2.sampled, v2.routes) == (2, 2, {"canary": 2})
    assert result.input_block_rate == pytest.approx(1 / 7)
    assert v1.negative_rating_rate == pytest.approx(1 / 4)
    assert v1.correction_rate == pytest.approx(1 / 4)
    assert v1.feedback_rate == pytest.approx(2 / 4)
    assert v2.negative_rating_rate == pytest.approx(1 / 2)
    assert v1.output_block_rate == pytest.approx(1 / 4) and v1.fallback_rate == pytest.approx(1 / 4)
    assert v2.fallback_rate == pytest.approx(1 / 2)
    assert v2.scored == 1 and v2.answered == 1 and v2.harmful_rate == 0.0  # fallback left out
    assert v2.reward_mean == pytest.approx(6.0)

    # Every v1 record sampled: its figures are exact.
    full = evaluate_window(
        items,
        feedback,
        app="app",
        start=T - timedelta(hours=1),
        end=T + timedelta(minutes=1),
        config=OnlineEvalConfig(samples_per_version=10, min_drift_samples=2),
        guard=KeywordGuard(),
        reward=LengthReward(),
        facts=facts,
    )
    f1 = full.versions["1"]
    assert (f1.sampled, f1.answered, f1.scored, f1.harmful) == (4, 4, 3, 2)
    assert f1.harmful_rate == pytest.approx(2 / 4)  # one blocked + one served harmful
    assert (f1.grounding_checked, f1.ungrounded) == (3, 1)
    assert f1.reward_n == 3 and f1.reward_mean == pytest.approx((3 + 3 + 5) / 3)
    metrics = full.metrics()
    assert metrics["v1.total"] == 4 and metrics["v2.sampled"] == 2
    assert metrics["v1.routes.champion"] == 4 and metrics["window.unrouted"] == 1
    assert "v1.drift.prompt_chars.psi" not in metrics  # no reference prompts given


def test_an_empty_answer_is_served_and_rewarded_but_never_harmful():
    items = [_it(0, response=""), _it(1, response="  "), _it(2, response="a weapon, here")]
    result = evaluate_window(
        items,
        [],
        app="app",
        start=T - timedelta(minutes=5),
        end=T,
        config=OnlineEvalConfig(),
        guard=KeywordGuard(),
        reward=LengthReward(),
    )
    fig = result.versions["1"]
    assert (fig.scored, fig.answered, fig.harmful) == (3, 3, 1)
    assert fig.empty_rate == pytest.approx(2 / 3) and fig.harmful_rate == pytest.approx(1 / 3)
    assert fig.reward_n == 3 and fig.reward_mean == pytest.approx(1.0)  # (0 + 0 + 3) / 3


def test_without_models_the_model_figures_are_unmeasured_not_zero():
    result = evaluate_window(
        [_it(0), _it(1)],
        [],
        app="app",
        start=T - timedelta(minutes=5),
        end=T,
        config=OnlineEvalConfig(),
    )
    fig = result.versions["1"]
    assert fig.harmful_rate is None and fig.reward_mean is None and fig.ungrounded_rate is None
    assert "v1.harmful_rate" not in result.metrics() and result.metrics()["v1.total"] == 2
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_window(
            [], [], app="a", start=T.replace(tzinfo=None), end=T, config=OnlineEvalConfig()
        )


def test_settings_section_has_defaults_and_rejects_unknown_keys():
    settings = load_settings("local", env={})
    assert settings.online_eval.interval_s == 300
    assert settings.online_eval.samples_per_version > 0 and settings.online_eval.lookback_s > 0
    env = {"LOOPWRIGHT_ONLINE_EVAL__INTERVAL_S": "60"}
    assert load_settings("local", env=env).online_eval.interval_s == 60
    with pytest.raises(ConfigError, match="interval_s"):
        load_settings("local", env={"LOOPWRIGHT_ONLINE_EVAL__INTERVALL_S": "60"})
