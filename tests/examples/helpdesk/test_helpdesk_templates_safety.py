import re

import pytest

from examples.helpdesk.kb import fact_index, intents, knowledge_base, slot_of_intent
from examples.helpdesk.safety import (
    CATEGORIES,
    REFUSAL_TEXT,
    SELF_HARM_TEXT,
    category,
    harmful_categories,
    is_refusal,
    is_safe_completion,
)
from examples.helpdesk.templates import (
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    questions,
    template_slots,
    templates,
)


def test_every_intent_has_5_training_and_2_heldout_templates_with_its_one_slot():
    assert set(TRAIN_TEMPLATES) == set(HELDOUT_TEMPLATES) == set(intents())
    for intent in intents():
        assert len(TRAIN_TEMPLATES[intent]) >= 5, intent
        assert len(HELDOUT_TEMPLATES[intent]) >= 2, intent
        assert not set(TRAIN_TEMPLATES[intent]) & set(HELDOUT_TEMPLATES[intent])
        for tmpl in TRAIN_TEMPLATES[intent] + HELDOUT_TEMPLATES[intent]:
            assert template_slots(tmpl) == [slot_of_intent(intent)], tmpl


def test_rendered_questions_are_short_and_heldout_never_equals_a_training_question():
    train_all: set[str] = set()
    held_all: set[str] = set()
    for fact in knowledge_base(1):
        train = questions(fact, "train")
        held = questions(fact, "heldout")
        for q in train + held:
            assert len(q.split()) <= 25, q
        train_all.update(q.lower() for q in train)
        held_all.update(q.lower() for q in held)
    assert not train_all & held_all


def test_template_lookup_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid splits"):
        templates("plan_price", "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid intents"):
        templates("nope", "train")


def test_at_least_six_harmful_categories_about_half_covered_in_v1():
    harmful = harmful_categories()
    assert len(harmful) >= 6
    covered = [c for c in harmful if c.covered_in_v1]
    assert 0.3 <= len(covered) / len(harmful) <= 0.7
    assert {c.expected_behaviour for c in harmful} == {"refuse", "safe_complete"}
    assert "injection" in CATEGORIES and CATEGORIES["injection"].label == "injection"


def test_each_category_has_templates_responses_and_benign_lookalikes():
    for cat in CATEGORIES.values():
        assert len(cat.train_templates) >= 5, cat.name
        assert len(cat.heldout_templates) >= 2, cat.name
        assert not set(cat.train_templates) & set(cat.heldout_templates)
        assert cat.compliant_train and cat.compliant_heldout
        assert cat.lookalikes_train and cat.lookalikes_heldout
        assert cat.prompts("train", ("Q?",)) and cat.prompts("heldout", ("Q?",))
        expected = SELF_HARM_TEXT if cat.expected_behaviour == "safe_complete" else REFUSAL_TEXT
        assert cat.response == expected
        for look in cat.lookalikes_train + cat.lookalikes_traffic + cat.lookalikes_heldout:
            if look.fact_id:
                assert look.fact_id in fact_index(1), look.fact_id
            for rev in (1, 2):
                answer = look.answer_at(rev)
                assert not is_refusal(answer) and not is_safe_completion(answer), answer
        for bad in cat.compliant_train + cat.compliant_heldout:
            assert not is_refusal(bad) and not is_safe_completion(bad), bad


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_traffic_lookalikes_reword_training_questions_and_stay_clear_of_heldout():
    # The night learns from traffic wording; held-out must still measure wording it never saw.
    heldout = [look.text for cat in CATEGORIES.values() for look in cat.lookalikes_heldout]
    for cat in CATEGORIES.values():
        assert len(cat.lookalikes_traffic) >= 8, cat.name
        train_answers = {look.answer_at(2) for look in cat.lookalikes_train}
        for look in cat.lookalikes_traffic:
            assert look.answer_at(2) in train_answers, look.text  # same question, other words
            assert _words(look.text) not in [_words(t.text) for t in cat.lookalikes_train]
            # Word overlap (Jaccard) with every held-out wording stays at most one half;
            # held-out look-alikes share up to 0.57 with their training questions.
            closest = max(
                len(_words(look.text) & _words(h)) / len(_words(look.text) | _words(h))
                for h in heldout
            )
            assert closest <= 0.5, (look.text, closest)


def test_refusal_and_safe_completion_detectors():
    assert is_refusal(REFUSAL_TEXT)
    assert is_refusal("Sorry, I cannot help with that.")
    assert not is_refusal("Go to Billing > Plans and click Upgrade.")
    assert is_safe_completion(SELF_HARM_TEXT)
    assert not is_safe_completion(REFUSAL_TEXT)


def test_unknown_category_fails_listing_names():
    with pytest.raises(ValueError, match="credential_theft"):
        category("nope")
