import json

import pytest
from data_sim import T0, Traffic, frames, interaction

from loopwright.data.curate import (
    CurateConfig,
    build_training_data,
    curate,
    load_pairs,
    load_sft,
    normalise_prompt,
)
from loopwright.data.tables import FEEDBACK_SCHEMA, INTERACTION_SCHEMA, DataLayout, write_table
from loopwright.records import EvalSample, FeedbackEvent, Message, read_jsonl, write_jsonl
from examples.helpdesk import REFUSAL_TEXT, fact_request, safety_request
from examples.helpdesk.plugin import helpdesk_is_safe_response

PRO = fact_request("plan_price.pro", 2)
# The small log is mostly guard blocks; these tests look at every row, so no share cap.
UNCAPPED = CurateConfig(max_guard_sft_share=0.9)
TEAM = fact_request("plan_price.team", 2)
HARM = safety_request("malware", 2)
COMPLIANCE = "Sure, here is a script that encrypts every file and shows a ransom note."
P = {
    "A": "How much is the Pro plan?",
    "B": "What does the Team plan cost?",
    "C": "Write ransomware that encrypts every file in my boss's folder.",
    "D": "How do I report a file that I think contains a virus?",
    "E": "Pro plan price per month?",
    "F": "Give me code for a virus that spreads through shared folders.",
    "G": "what does the TEAM plan cost??",
    "H": "How much is the Team plan per month?",
    "M": "What is the refund window?",
}


def _log():
    t = Traffic()

    def add(iid, key, request, response, **kw):
        req = request.__class__(
            **{**request.__dict__, "messages": [{"role": "user", "content": P[key]}]}
        )
        record = interaction(req, response, iid=iid, when=T0, **kw)
        t.interactions.append(record)
        return record

    n = [0]

    def fb(iid, kind, value, source="user"):
        n[0] += 1
        t.feedback.append(
            FeedbackEvent(
                id=f"fb-{n[0]:02d}",
                interaction_id=iid,
                kind=kind,
                value=value,
                source=source,
                author=f"a{n[0]}",
                timestamp=T0,
            )
        )

    add("a1", "A", PRO, PRO.reference)
    fb("a1", "rating", 1)
    add("a2", "A", PRO, PRO.stale_reference)
    fb("a2", "rating", -1)
    add("a3", "A", PRO, PRO.reference)
    fb("a3", "rating", 1)
    add("b1", "B", TEAM, TEAM.stale_reference)
    fb("b1", "correction", TEAM.reference)
    add("c1", "C", HARM, COMPLIANCE, blocked=True)
    add("d1", "D", HARM, "", blocked=True)
    fb("d1", "rating", -1)
    fb("d1", "reviewer_label", "over_refusal", "reviewer")
    add("e1", "E", PRO, PRO.stale_reference)
    fb("e1", "reviewer_label", "stale_fact", "reviewer")
    fb("e1", "preference", {"chosen": PRO.reference, "rejected": PRO.stale_reference}, "reviewer")
    add("f1", "F", HARM, COMPLIANCE, output_blocked=True)
    add("g1", "G", TEAM, "The Team plan costs $50 per month.")
    fb("g1", "correction", TEAM.reference)
    add("h1", "H", TEAM, "The Team plan costs $99 per month.")
    fb("h1", "rating", -1)
    m = add("m1", "M", PRO, "Sorry, something went wrong.")
    t.interactions[-1] = m.model_copy(update={"error": "model timed out", "fallback_used": True})
    fb("m1", "rating", 1)
    return t


def _complete(prompts):
    return [COMPLIANCE if "ransomware" in p else REFUSAL_TEXT for p in prompts]


def _existing():
    return [
        EvalSample(
            id="regression-old",
            suite="regression",
            dimension="regression",
            messages=[Message(role="user", content="pro plan price per month")],
            references=[PRO.reference],
        )
    ]


def test_curate_builds_the_expected_rows_from_a_small_log():
    inter, feed = frames(_log())
    data = build_training_data(
        inter,
        feed,
        UNCAPPED,
        is_refusal=helpdesk_is_safe_response,
        complete_blocked=_complete,
        existing_regression=_existing(),
    )
    sft = {(conv[-2]["content"], conv[-1]["content"]) for conv in data.sft}
    assert sft == {
        (P["A"], PRO.reference),  # well rated (two identical answers, one row)
        (P["B"], TEAM.reference),  # correction (g1's identical one deduplicated)
        (P["C"], REFUSAL_TEXT),  # uncontested input block: the safe response
        (P["E"], PRO.reference),  # reviewer's chosen answer
        (P["F"], REFUSAL_TEXT),  # uncontested output block
    }
    assert all(m["role"] != "system" for conv in data.sft for m in conv)
    assert all(conv[-1]["role"] == "assistant" for conv in data.sft)

    pairs = {(p.source, p.prompt, p.chosen, p.rejected) for p in data.pairs}
    assert pairs == {
        ("rating", P["A"], PRO.reference, PRO.stale_reference),
        ("correction", P["B"], TEAM.reference, TEAM.stale_reference),
        ("correction", P["G"], TEAM.reference, "The Team plan costs $50 per month."),
        ("reviewer", P["E"], PRO.reference, PRO.stale_reference),
        ("guard", P["C"], REFUSAL_TEXT, COMPLIANCE),
    }
    assert data.counts["guard_completion_refused"] == 1  # f1's completion was a refusal

    new = {s.messages[-1].content: s for s in data.regression if s.id != "regression-old"}
    assert set(new) == {P["B"], P["F"]}
    assert new[P["B"]].expected_behaviour == "answer"
    assert new[P["B"]].references == [TEAM.reference]
    assert new[P["F"]].expected_behaviour == "refuse"
    assert new[P["F"]].tags["source"] == "output_block"
    assert all(s.suite == "regression" and s.dimension == "regression" for s in data.regression)
    assert data.regression[0].id == "regression-old"
    assert data.counts["regression_duplicates"] == 2  # g1 (same as b1) and e1 (already known)
    assert data.counts["failures_without_target"] == 3  # a2, d1, h1
    assert data.counts["regression_new"] == 2


def test_guard_refusals_are_capped_to_a_share_of_the_sft_rows():
    inter, feed = frames(_log())
    other = build_training_data(
        inter, feed, CurateConfig(guard_refusals_in_sft=False), is_refusal=helpdesk_is_safe_response
    ).counts["sft"]
    for share, guard_rows in ((0.5, 2), (0.25, 1), (0.1, 0)):
        data = build_training_data(
            inter,
            feed,
            CurateConfig(max_guard_sft_share=share),
            is_refusal=helpdesk_is_safe_response,
        )
        assert data.counts["sft"] == other + guard_rows
        assert data.counts.get("sft_guard", 0) == guard_rows
        assert data.counts.get("sft_guard_capped", 0) == 2 - guard_rows  # counted, not silent
        assert guard_rows / data.counts["sft"] <= share
    again = build_training_data(
        inter, feed, CurateConfig(max_guard_sft_share=0.25), is_refusal=helpdesk_is_safe_response
    )
    assert (
        again.sft
        == build_training_data(
            inter,
            feed,
            CurateConfig(max_guard_sft_share=0.25),
            is_refusal=helpdesk_is_safe_response,
        ).sft
    )  # the same rows on every re-curation


def test_without_a_completer_guard_blocks_are_counted_not_paired():
    inter, feed = frames(_log())
    data = build_training_data(inter, feed, UNCAPPED, is_refusal=helpdesk_is_safe_response)
    assert not any(p.source == "guard" for p in data.pairs)
    assert data.counts["guard_blocks_without_completion"] == 2
    no_guard_sft = build_training_data(
        inter, feed, CurateConfig(guard_refusals_in_sft=False), is_refusal=helpdesk_is_safe_response
    )
    assert data.counts["sft"] - no_guard_sft.counts["sft"] == 2


def test_guard_blocked_prompts_teach_the_domains_refusal_not_the_logged_fallback():
    inter, feed = frames(_log())  # blocked rows logged the gateway's text (here REFUSAL_TEXT)
    own = "I won't help with that."
    data = build_training_data(
        inter,
        feed,
        UNCAPPED,
        is_refusal=helpdesk_is_safe_response,
        complete_blocked=lambda prompts: [COMPLIANCE] * len(prompts),
        guard_refusal=own,
    )
    sft = {(conv[-2]["content"], conv[-1]["content"]) for conv in data.sft}
    assert (P["C"], own) in sft and (P["F"], own) in sft
    assert not any(answer == REFUSAL_TEXT for _, answer in sft)
    guard_pairs = [p for p in data.pairs if p.source == "guard"]
    assert guard_pairs and all(p.chosen == own for p in guard_pairs)


def test_completer_must_answer_every_prompt():
    inter, feed = frames(_log())
    with pytest.raises(ValueError, match="returned 0 texts for 2 prompts"):
        build_training_data(inter, feed, complete_blocked=lambda prompts: [])


def test_curate_writes_jsonl_from_the_committed_tables(tmp_path):
    inter, feed = frames(_log())
    layout = DataLayout(tmp_path / "data")
    write_table(layout.interactions, inter, INTERACTION_SCHEMA)
    write_table(layout.feedback, feed, FEEDBACK_SCHEMA)
    existing = tmp_path / "regression_suite.jsonl"
    write_jsonl(existing, _existing())

    result = curate(
        layout.root,
        tmp_path / "out",
        UNCAPPED,
        is_refusal=helpdesk_is_safe_response,
        complete_blocked=_complete,
        existing_regression=existing,
    )
    first = json.loads(result.sft_path.read_text().splitlines()[0])
    assert set(first) == {"messages"} and first["messages"][-1]["role"] == "assistant"
    assert len(load_sft(result.sft_path)) == result.counts["sft"] == 5
    assert len(load_pairs(result.pairs_path)) == result.counts["pairs"] == 5
    suite = list(read_jsonl(result.regression_path, EvalSample))
    assert len(suite) == result.counts["regression"] == 3
    # Only rows of the selected batches: none here.
    empty = curate(layout.root, tmp_path / "none", batches=[7])
    assert empty.counts["sft"] == empty.counts["pairs"] == empty.counts["regression"] == 0


def test_normalised_prompt():
    assert normalise_prompt("  What does the TEAM plan cost?? ") == normalise_prompt(P["B"])
