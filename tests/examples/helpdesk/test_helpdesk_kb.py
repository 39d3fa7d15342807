import re

import pytest

from examples.helpdesk.kb import (
    REVISIONS,
    UNKNOWN_TEXT,
    changed_fact_ids,
    fact_index,
    intents,
    knowledge_base,
    slot_of_intent,
    unknown_entities,
)
from examples.helpdesk.simulators import mentions


def test_both_revisions_hold_at_least_200_facts_with_the_same_ids_in_the_same_order():
    rev1, rev2 = knowledge_base(1), knowledge_base(2)
    assert len(rev1) >= 200
    assert [f.id for f in rev1] == [f.id for f in rev2]
    assert len({f.id for f in rev1}) == len(rev1)


def test_revision_2_changes_at_least_15_percent_of_facts_in_value_and_answer():
    changed = changed_fact_ids()
    rev1, rev2 = fact_index(1), fact_index(2)
    assert len(changed) / len(rev1) >= 0.15
    for fid in changed:
        assert rev1[fid].value != rev2[fid].value, fid
        assert rev1[fid].answer != rev2[fid].answer, fid
        assert rev1[fid].slots == rev2[fid].slots
    for fid in set(rev1) - changed:
        assert rev1[fid] == rev2[fid]


def test_every_answer_mentions_its_own_value_and_not_the_other_revisions_value():
    # The judging rules rely on values: a stale answer must be recognisable as stale.
    rev1, rev2 = fact_index(1), fact_index(2)
    for rev in (rev1, rev2):
        for fact in rev.values():
            assert mentions(fact.answer, fact.value), fact.id
    for fid in changed_fact_ids():
        assert not mentions(rev1[fid].answer, rev2[fid].value), fid
        assert not mentions(rev2[fid].answer, rev1[fid].value), fid


def test_answers_are_short_enough_for_a_160_position_model():
    for rev in REVISIONS:
        for fact in knowledge_base(rev):
            assert len(fact.answer.split()) <= 20, fact.answer
    assert len(UNKNOWN_TEXT.split()) <= 20


def test_fact_ids_follow_the_intent_prefix_and_each_intent_has_one_slot():
    for fact in knowledge_base(1):
        assert fact.id.startswith(fact.intent + ".")
        assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", fact.id), fact.id
        assert list(fact.slots) == [slot_of_intent(fact.intent)]


def test_unknown_revision_and_names_fail_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid revisions: \[1, 2\]"):
        knowledge_base(3)
    with pytest.raises(ValueError, match="valid intents"):
        slot_of_intent("nope")
    with pytest.raises(ValueError, match="valid slots"):
        unknown_entities("nope", "train")
    with pytest.raises(ValueError, match="valid splits"):
        unknown_entities("plan", "test")


def test_unknown_entities_are_not_in_the_kb_and_train_eval_are_disjoint():
    known = {v.lower() for f in knowledge_base(1) for v in f.slots.values()}
    for intent in intents():
        slot = slot_of_intent(intent)
        train, evals = unknown_entities(slot, "train"), unknown_entities(slot, "eval")
        assert train and evals
        assert not set(train) & set(evals)
        assert not {e.lower() for e in train + evals} & known
