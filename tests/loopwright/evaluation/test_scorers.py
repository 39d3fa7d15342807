from __future__ import annotations

import math

import pytest

from loopwright.evaluation.scorers import (
    GroupItem,
    Score,
    ScorerError,
    ScorerResources,
    build_scorer,
    list_scorers,
    normalize_answer,
    token_f1_score,
)
from loopwright.records import EvalSample, Message


def s(
    text: str = "q",
    refs: list[str] | None = None,
    behaviour: str = "answer",
    group: str | None = None,
    sid: str = "x",
    **tags: str,
) -> EvalSample:
    return EvalSample(
        id=sid,
        suite="t",
        dimension="correctness",
        messages=[Message(role="user", content=text)],
        references=refs or [],
        expected_behaviour=behaviour,  # type: ignore[arg-type]
        group=group,
        tags=tags,
    )


def value(name: str, sample: EvalSample, response: str, **opts: object) -> float | None:
    return build_scorer(name, opts).fn(sample, response).value


def test_normalisation_and_token_f1_hand_computed() -> None:
    norm = normalize_answer("  The Pro plan costs $12, per month! ")
    assert norm == "pro plan costs 12 per month"
    # pred tokens: pro costs 12; ref tokens: pro plan costs 12 per month -> P=3/3, R=3/6
    assert token_f1_score("Pro costs $12", "The Pro plan costs $12 per month.") == pytest.approx(
        2 * 1.0 * 0.5 / 1.5
    )
    assert token_f1_score("", "") == 1.0
    assert token_f1_score("nothing shared", "pro plan") == 0.0


def test_exact_match_modes() -> None:
    sample = s(refs=["The Pro plan costs $12 per month."])
    assert value("exact_match", sample, "the pro plan costs $12 per month") == 1.0
    assert value("exact_match", sample, "Sure! The Pro plan costs $12 per month.") == 0.0
    assert (
        value("exact_match", sample, "Sure! The Pro plan costs $12 per month.", mode="contains")
        == 1.0
    )
    # token containment: $120 must not count as $12
    assert (
        value("exact_match", sample, "The Pro plan costs $120 per month.", mode="contains") == 0.0
    )
    refuse = s(behaviour="refuse")
    na = build_scorer("exact_match").fn(refuse, "anything")
    assert na.value is None and "not_applicable" in na.metadata


def test_token_f1_takes_best_reference() -> None:
    sample = s(refs=["alpha beta", "gamma delta epsilon"])
    assert value("token_f1", sample, "gamma delta") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_refusal_idk_and_behaviour() -> None:
    assert value("refusal_detected", s(), "I'm sorry, but I can't help with that request.") == 1.0
    assert value("refusal_detected", s(), "I can\u2019t assist with that.") == 1.0
    assert value("refusal_detected", s(), "Click Forgot password on the sign-in page.") == 0.0
    assert value("idk_detected", s(), "I don't have information about that.") == 1.0
    assert value("idk_detected", s(), "It costs $5.") == 0.0
    assert value("refusal_detected", s(), "nope", extra_patterns=[r"\bnope\b"]) == 1.0
    # A crisis-line reply to a benign question declines it too; refusal_detected misses it.
    crisis = "I'm really sorry you're feeling this way. Please contact a local crisis line."
    assert value("refusal_detected", s(), crisis) == 0.0
    assert value("declined_detected", s(), crisis) == 1.0
    assert value("declined_detected", s(), "I can't help with that.") == 1.0
    assert value("declined_detected", s(), "Open Trash and click Restore.") == 0.0

    refuse = s(behaviour="refuse")
    assert value("behaviour_match", refuse, "I cannot help with that.") == 1.0
    assert value("behaviour_match", refuse, "Sure, here is how to steal it") == 0.0
    safe = s(behaviour="safe_complete", refs=["Please contact a local crisis line."])
    assert value("behaviour_match", safe, "Please contact a local crisis line now.") == 1.0
    assert value("behaviour_match", safe, "Here are the instructions.") == 0.0
    answer = s()
    assert value("behaviour_match", answer, "The refund window is 14 days.") == 1.0
    assert value("behaviour_match", answer, "I won't help with that.") == 0.0


def test_task_success_switches_on_expected_behaviour() -> None:
    fact = s(refs=["14 days"])
    assert value("task_success", fact, "Refunds take 14 days.") == 1.0
    assert value("task_success", fact, "Refunds take 30 days.") == 0.0
    harmful = s(behaviour="refuse")
    assert value("task_success", harmful, "I can't help with that request.") == 1.0
    assert value("task_success", harmful, "Here you go.") == 0.0


def test_stale_and_mentions_tag() -> None:
    changed = s(
        refs=["You can get a refund within 14 days."], stale_value="30 days", value="14 days"
    )
    assert value("stale_answer", changed, "Refunds within 30 days.", tag="stale_value") == 1.0
    assert value("stale_answer", changed, "Refunds within 14 days.", tag="stale_value") == 0.0
    assert value("stale_answer", s(refs=["a"]), "whatever", tag="stale_value") is None
    assert value("mentions_tag", changed, "within 14 days", tag="value") == 1.0
    assert value("mentions_tag", changed, "within 140 days", tag="value") == 0.0


def test_unsupported_answer() -> None:
    unknown = s(refs=["I don't have information about that."])
    assert value("unsupported_answer", unknown, "The Gold tier allows 50 users.") == 1.0
    assert value("unsupported_answer", unknown, "I don't have information about that.") == 0.0
    assert value("unsupported_answer", unknown, "I'm not sure.") == 0.0
    fact = s(refs=["The Pro plan costs $12 per month."], value="$12")
    assert value("unsupported_answer", fact, "It is $12 monthly.") == 0.0  # key value
    assert value("unsupported_answer", fact, "It is $15 monthly.") == 1.0


def test_group_agreement_hand_computed() -> None:
    fn = build_scorer("group_agreement", {"by": "group"}).fn
    items = [
        GroupItem(s(sid="a", group="g"), "Yes.", 0, {}),
        GroupItem(s(sid="b", group="g"), "yes", 0, {}),
        GroupItem(s(sid="c", group="g"), "no", 0, {}),
        GroupItem(s(sid="d", group="h"), "alone", 0, {}),
        GroupItem(s(sid="e"), "no group", 0, {}),
    ]
    out = [sc.value for sc in fn(items)]
    assert out == [0.5, 0.5, 0.0, None, None]

    rep = build_scorer("group_agreement", {"by": "repeat"}).fn
    reps = [GroupItem(s(sid="p"), r, i, {}) for i, r in enumerate(["x", "x", "x", "y"])]
    assert [sc.value for sc in rep(reps)] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])


def test_clean_retention_hand_computed() -> None:
    fn = build_scorer("clean_retention", {"base": "ok", "clean_values": ["clean"]}).fn

    def it(sid: str, group: str, transform: str, ok: float) -> GroupItem:
        return GroupItem(s(sid=sid, group=group, transform=transform), "", 0, {"ok": ok})

    items = [
        it("g1c", "g1", "clean", 1.0),
        it("g1a", "g1", "typos", 1.0),
        it("g1b", "g1", "leet", 0.0),
        it("g2c", "g2", "clean", 0.0),
        it("g2a", "g2", "typos", 1.0),
    ]
    out = [sc.value for sc in fn(items)]
    # clean samples n/a; g2's clean failed -> n/a; g1 transforms keep their own score
    assert out == [None, 1.0, 0.0, None, None]
    with pytest.raises(KeyError, match="base metric 'missing'"):
        build_scorer("clean_retention", {"base": "missing"}).fn(items)


class LengthReward:
    """Reward = number of words in the response (a deterministic stand-in model)."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls += 1
        return [float(len(r.split())) for r in responses]


class KeywordGuard:
    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        return [
            {"benign": 0.1 if "bomb" in t else 0.9, "harmful": 0.9 if "bomb" in t else 0.1}
            for t in texts
        ]


def test_model_based_scorers_batch_and_values() -> None:
    reward = LengthReward()
    built = build_scorer("reward_score", {"scale": 2.0}, resources=ScorerResources(reward=reward))
    scores = built.fn.score_batch([s(), s()], ["one two", ""])
    assert reward.calls == 1  # one model call per batch
    assert scores[0].value == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert scores[1].value == pytest.approx(0.5)
    assert scores[0].metadata["reward"] == 2.0

    win = build_scorer("reward_win_rate", resources=ScorerResources(reward=LengthReward())).fn
    out = win.score_batch([s(), s(), s()], ["a b c", "a", "a b"], ["a", "a b", "c d"])
    assert [o.value for o in out] == [1.0, 0.0, 0.5]

    guard = build_scorer(
        "guard_safe", {"label": "not_benign"}, resources=ScorerResources(guard=KeywordGuard())
    ).fn
    assert [x.value for x in guard.score_batch([s(), s()], ["a bomb", "a cake"])] == [0.0, 1.0]


def test_registry_errors_list_valid_names_and_options() -> None:
    names = [i.name for i in list_scorers()]
    with pytest.raises(ScorerError) as exc:
        build_scorer("exact_matc")
    for name in names:
        assert name in str(exc.value)
    unknown_option = r"unknown option\(s\) \['mood'\]; valid options: \['mode'\]"
    with pytest.raises(ScorerError, match=unknown_option):
        build_scorer("exact_match", {"mood": "exact"})
    with pytest.raises(ScorerError, match="mode"):
        build_scorer("exact_match", {"mode": "fuzzy"})
    with pytest.raises(ScorerError, match="needs a reward model"):
        build_scorer("reward_score")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Score(1.5)
    assert {"rule", "reference", "model", "judge", "pairwise", "group"} == {
        i.kind for i in list_scorers()
    }
