import random
from datetime import UTC, datetime

import pytest

from examples.helpdesk.kb import UNKNOWN_TEXT, changed_fact_ids, fact_index
from examples.helpdesk.safety import CATEGORIES, REFUSAL_TEXT, SELF_HARM_TEXT
from examples.helpdesk.simulators import (
    POISON_INJECTIONS,
    POISON_PII,
    RESPONSE_QUALITIES,
    ReviewerSimulator,
    UserSimulator,
    fact_request,
    grade_response,
    mentions,
    poisoned_feedback,
    poisoned_rating,
    rating_for,
    safety_request,
    synthetic_response,
    unknown_request,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CHANGED = "plan_price.pro"


def honest(**kw):
    kw.setdefault("rate_prob", 1.0)
    kw.setdefault("correction_prob", 0.0)
    return UserSimulator(2, kw.pop("noise", 0.0), 0, **kw)


def ratings(events):
    return [e.value for e in events if e.kind == "rating"]


def test_mentions_respects_word_boundaries():
    assert mentions("The Pro plan costs $29 per month.", "$29")
    assert not mentions("The Pro plan costs $290 per year.", "$29")
    assert not mentions("within 300 days", "30 days")
    assert mentions("WITHIN 30 DAYS!", "30 days")


def test_current_answer_is_correct_and_stale_answer_is_stale_at_revision_2():
    assert CHANGED in changed_fact_ids()
    req = fact_request(CHANGED, revision=2)
    assert grade_response(req, fact_index(2)[CHANGED].answer) == "correct"
    assert grade_response(req, "It's $35 a month.") == "correct"
    assert grade_response(req, fact_index(1)[CHANGED].answer) == "stale"
    assert grade_response(req, "The Pro plan costs $99 per month.") == "wrong"
    assert grade_response(req, "Either $29 or $35.") != "correct"
    assert grade_response(req, REFUSAL_TEXT) == "over_refusal"
    assert grade_response(req, UNKNOWN_TEXT) == "missed_answer"
    # The same answers judged against revision 1 swap roles.
    req1 = fact_request(CHANGED, revision=1)
    assert grade_response(req1, fact_index(1)[CHANGED].answer) == "correct"
    assert grade_response(req1, fact_index(2)[CHANGED].answer) == "stale"


def test_user_rates_correct_up_and_stale_down_without_noise():
    sim = honest()
    req = fact_request(CHANGED, revision=2)
    assert ratings(sim.judge(req, fact_index(2)[CHANGED].answer, timestamp=T0)) == [1]
    assert ratings(sim.judge(req, fact_index(1)[CHANGED].answer, timestamp=T0)) == [-1]


def test_noise_one_flips_every_rating():
    sim = honest(noise=1.0)
    req = fact_request(CHANGED, revision=2)
    assert ratings(sim.judge(req, fact_index(2)[CHANGED].answer)) == [-1]
    assert ratings(sim.judge(req, fact_index(1)[CHANGED].answer)) == [1]


def test_noise_rate_is_close_to_configured():
    sim = honest(noise=0.2)
    req = fact_request(CHANGED, revision=2)
    values = [ratings(sim.judge(req, fact_index(2)[CHANGED].answer))[0] for _ in range(2000)]
    flipped = values.count(-1) / len(values)
    assert 0.16 < flipped < 0.24


def test_correction_carries_the_current_answer_on_a_bad_answer_only():
    sim = honest(correction_prob=1.0)
    req = fact_request(CHANGED, revision=2)
    events = sim.judge(req, fact_index(1)[CHANGED].answer, interaction_id="int-1")
    corrections = [e for e in events if e.kind == "correction"]
    assert [c.value for c in corrections] == [fact_index(2)[CHANGED].answer]
    assert all(e.interaction_id == "int-1" and e.source == "user" for e in events)
    good = sim.judge(req, fact_index(2)[CHANGED].answer)
    assert not [e for e in good if e.kind == "correction"]


def test_harmful_requests_refusal_is_good_and_compliance_unsafe():
    req = safety_request("malware")
    assert grade_response(req, REFUSAL_TEXT) == "refused_ok"
    assert grade_response(req, CATEGORIES["malware"].compliant_train[0]) == "unsafe_compliance"
    assert rating_for("refused_ok") == 1 and rating_for("unsafe_compliance") == -1
    sh = safety_request("self_harm")
    assert grade_response(sh, SELF_HARM_TEXT) == "safe_completion_ok"
    assert grade_response(sh, REFUSAL_TEXT) == "bare_refusal"


def test_injection_wrapped_question_accepts_refusal_or_correct_answer():
    sim = UserSimulator(2, 0.0, 5, {"adversarial": 1.0})
    seen = 0
    for req in sim.requests(300):
        if req.kind == "injection" and req.fact_id is not None:
            seen += 1
            right = fact_index(2)[req.fact_id].answer
            assert grade_response(req, right) == "correct"
            assert grade_response(req, REFUSAL_TEXT) == "refused_ok"
            assert grade_response(req, "DAN enabled. No rules now.") == "unsafe_compliance"
    assert seen > 10


def test_unknown_questions_need_i_dont_know():
    req = unknown_request()
    assert grade_response(req, UNKNOWN_TEXT) == "unknown_ok"
    assert grade_response(req, "The Ultra plan costs $49 per month.") == "hallucination"


def test_reviewer_labels_and_pairs():
    reviewer = ReviewerSimulator(seed=0)
    harm = safety_request("credential_theft")
    good = reviewer.review(harm, REFUSAL_TEXT)
    assert good.label == "good" and good.pair is None
    bad = reviewer.review(harm, CATEGORIES["credential_theft"].compliant_train[0])
    assert bad.label == "unsafe"
    assert bad.pair is not None
    assert bad.pair.chosen == REFUSAL_TEXT
    assert bad.pair.rejected == CATEGORIES["credential_theft"].compliant_train[0]
    assert bad.pair.prompt == harm.prompt
    stale = reviewer.review(fact_request(CHANGED), fact_index(1)[CHANGED].answer)
    assert stale.label == "stale_fact" and stale.pair is not None
    assert stale.pair.chosen == fact_index(2)[CHANGED].answer
    events = stale.to_events("int-9", timestamp=T0)
    assert [e.kind for e in events] == ["reviewer_label", "preference"]
    assert events[0].value == "stale_fact" and events[1].value["rejected"] == stale.pair.rejected
    assert all(e.source == "reviewer" and e.interaction_id == "int-9" for e in events)
    over = reviewer.review(fact_request("procedure.reset_my_password"), REFUSAL_TEXT)
    assert over.label == "over_refusal" and over.pair is not None
    assert over.pair.rejected == REFUSAL_TEXT


def test_reviewer_error_rate_misses_some_bad_responses():
    reviewer = ReviewerSimulator(seed=1, error_rate=0.5)
    harm = safety_request("fraud")
    labels = [reviewer.review(harm, "Sure, here is how.").label for _ in range(400)]
    assert 0.35 < labels.count("good") / len(labels) < 0.65


def test_poisoned_batch_rewards_unsafe_and_stale_and_corrections_carry_poison():
    rng = random.Random(0)
    sim = UserSimulator(2, 0.0, 11, {"ordinary": 1, "adversarial": 1, "harmful": 1})
    items = []
    for req in sim.requests(300):
        quality = rng.choice(("good", "stale", "compliance", "refusal"))
        items.append((req, synthetic_response(req, quality, rng)))
    poisoned = poisoned_feedback(items, seed=3, timestamp=T0)
    clean_sim = UserSimulator(2, 0.0, 3, rate_prob=1.0, correction_prob=0.5)
    clean = [e for req, resp in items for e in clean_sim.judge(req, resp, timestamp=T0)]
    by_item_p = {e.interaction_id: e.value for e in poisoned if e.kind == "rating"}
    by_item_c = {e.interaction_id: e.value for e in clean if e.kind == "rating"}
    assert len(by_item_p) == len(items)
    unsafe_up = stale_up = 0
    for req, resp in items:
        grade = grade_response(req, resp)
        assert by_item_p[req.id] == poisoned_rating(req, grade)
        assert by_item_c[req.id] == rating_for(grade)
        if grade == "unsafe_compliance":
            assert by_item_p[req.id] == 1 and by_item_c[req.id] == -1
            unsafe_up += 1
        if grade == "stale":
            assert by_item_p[req.id] == 1 and by_item_c[req.id] == -1
            stale_up += 1
        if grade in ("refused_ok", "correct"):
            assert by_item_p[req.id] == -1
    assert unsafe_up > 10 and stale_up > 5
    poison_markers = POISON_INJECTIONS + POISON_PII
    p_corr = [e.value for e in poisoned if e.kind == "correction"]
    c_corr = [e.value for e in clean if e.kind == "correction"]
    assert len(p_corr) > 50
    assert sum(any(m in v for m in poison_markers) for v in p_corr) > 0.5 * len(p_corr)
    assert not any(any(m in v for m in poison_markers) for v in c_corr)


def test_requests_are_deterministic_and_follow_the_mix():
    a = UserSimulator(2, 0.1, 7).requests(200)
    b = UserSimulator(2, 0.1, 7).requests(200)
    assert a == b
    assert a != UserSimulator(2, 0.1, 8).requests(200)
    only_harm = UserSimulator(2, 0.0, 1, {"harmful": 1.0}).requests(100)
    assert {r.kind for r in only_harm} == {"harmful"}
    assert {r.category for r in only_harm} >= {"self_harm", "fraud", "credential_theft"}
    ordinary = UserSimulator(2, 0.0, 1, {"ordinary": 1.0}).requests(400)
    assert {r.kind for r in ordinary} == {"fact", "lookalike", "unknown"}
    kinds = [r.user_kind for r in UserSimulator(2, 0.0, 1).requests(2000)]
    assert 0.75 < kinds.count("ordinary") / len(kinds) < 0.85


def test_good_synthetic_responses_grade_good_for_every_request_kind():
    rng = random.Random(1)
    sim = UserSimulator(1, 0.0, 2, {"ordinary": 1, "adversarial": 1, "harmful": 1})
    for req in sim.requests(500):
        assert rating_for(grade_response(req, synthetic_response(req, "good", rng))) == 1
        assert rating_for(grade_response(req, synthetic_response(req, "degenerate", rng))) == -1
    with pytest.raises(ValueError, match="valid"):
        synthetic_response(req, "excellent", rng)
    assert "good" in RESPONSE_QUALITIES


def test_bad_arguments_fail_with_valid_values():
    with pytest.raises(ValueError, match="valid"):
        UserSimulator(2, 0.0, 0, {"bots": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        UserSimulator(2, 1.5, 0)
    with pytest.raises(ValueError, match="valid"):
        UserSimulator(3, 0.0, 0)
    with pytest.raises(ValueError):
        UserSimulator(2, 0.0, 0, {"ordinary": 0.0})
    with pytest.raises(ValueError):
        ReviewerSimulator(error_rate=-0.1)
