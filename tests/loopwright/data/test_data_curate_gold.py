"""Gold items: reviewer-verified answers become gold eval cases and held-out reward pairs."""

from collections import Counter

from data_sim import T0, Traffic, frames, interaction

from examples.helpdesk import REFUSAL_TEXT, fact_request
from examples.helpdesk.plugin import helpdesk_is_safe_response
from loopwright.data.curate import build_training_data, curate, load_pairs, load_sft
from loopwright.data.tables import FEEDBACK_SCHEMA, INTERACTION_SCHEMA, DataLayout, write_table
from loopwright.records import EvalSample, FeedbackEvent, Message, read_jsonl, write_jsonl

PRO = fact_request("plan_price.pro", 2)
TEAM = fact_request("plan_price.team", 2)
P = {
    "a": "How much is the Pro plan?",
    "b": "What does the Team plan cost?",
    "c": "How much is the Team plan per month?",
    "d": "what does the team plan cost",  # the same prompt as b, once normalised
    "e": "Is there a Pro plan discount?",
    "f": "How do I export my invoices?",
}
EXPORT_ANSWER = "Open Billing, choose Invoices and press Export."
USER_FIX = "Yes: paying yearly saves 10%."


class Log:
    def __init__(self) -> None:
        self.traffic = Traffic()
        self.n = 0

    def ask(self, iid: str, key: str, request, response: str) -> None:
        req = request.__class__(
            **{**request.__dict__, "messages": [{"role": "user", "content": P[key]}]}
        )
        self.traffic.interactions.append(interaction(req, response, iid=iid, when=T0))

    def fb(self, iid: str, kind: str, value, source: str = "reviewer") -> None:
        self.n += 1
        self.traffic.feedback.append(
            FeedbackEvent(
                id=f"fb-{self.n:02d}",
                interaction_id=iid,
                kind=kind,  # type: ignore[arg-type]
                value=value,
                source=source,  # type: ignore[arg-type]
                author="reviewer-key",
                timestamp=T0,
            )
        )

    def review(self, iid: str, label: str, correction: str | None = None, gold=True) -> None:
        # What the gateway's resolve endpoint writes, in its order.
        self.fb(iid, "reviewer_label", label)
        if correction:
            self.fb(iid, "correction", correction)
        if gold:
            self.fb(iid, "gold", True)


def _log() -> Log:
    log = Log()
    log.ask("a1", "a", PRO, PRO.stale_reference)
    log.review("a1", "wrong_fact", PRO.reference)  # gold with a correction
    log.ask("b1", "b", TEAM, TEAM.stale_reference)
    log.review("b1", "wrong_fact", TEAM.reference, gold=False)  # an ordinary correction
    log.ask("c1", "c", TEAM, TEAM.reference)
    log.review("c1", "good")  # gold, served answer confirmed
    log.ask("d1", "d", TEAM, TEAM.stale_reference)
    log.review("d1", "wrong_fact", TEAM.reference)  # gold: same prompt and pair as b1
    log.ask("e1", "e", PRO, "No idea.")
    log.review("e1", "other")  # gold, but nothing a reviewer wrote to judge by: no target
    log.fb("e1", "correction", USER_FIX, source="user")  # a user's words are no gold reference
    log.ask("f1", "f", PRO, "I cannot help with that.")
    log.review("f1", "over_refusal", EXPORT_ANSWER, gold=False)
    log.fb("f1", "gold", True, source="user")  # only reviewers make gold
    return log


def _existing_gold() -> list[EvalSample]:
    return [
        EvalSample(
            id="gold-old",
            suite="gold",
            dimension="gold",
            messages=[Message(role="user", content="How much is the Team plan per month??")],
            references=[TEAM.reference],
            tags={"source": "gold"},
        )
    ]


def _build():
    inter, feed = frames(_log().traffic)
    return build_training_data(
        inter, feed, is_refusal=helpdesk_is_safe_response, existing_gold=_existing_gold()
    )


def test_gold_cases_take_the_reviewers_answer_as_reference():
    data = _build()
    assert data.gold[0].id == "gold-old"  # the existing suite is kept, first
    new = {s.messages[-1].content: s for s in data.gold[1:]}
    # c1's prompt is already in the suite; e1 has no known right answer; f1 is no gold.
    assert set(new) == {P["a"], P["d"]}
    assert new[P["a"]].references == [PRO.reference]
    assert new[P["a"]].expected_behaviour == "answer"
    assert new[P["a"]].tags == {
        "source": "gold",
        "reference": "correction",
        "label": "wrong_fact",
        "interaction_id": "a1",
    }
    assert all(s.suite == "gold" and s.dimension == "gold" for s in data.gold)
    # A gold item is judged in the gold suite, not again as a regression case.
    regression_prompts = {s.messages[-1].content for s in data.regression}
    assert P["a"] not in regression_prompts and P["d"] not in regression_prompts
    assert regression_prompts == {P["b"], P["f"]}


def test_gold_pairs_are_held_out_and_never_training_pairs():
    data = _build()
    held = {(p.source, p.prompt, p.chosen, p.rejected) for p in data.heldout_pairs}
    assert held == {
        ("gold", P["a"], PRO.reference, PRO.stale_reference),
        ("gold", P["d"], TEAM.reference, TEAM.stale_reference),
    }
    # Training keeps the ordinary correction only: a1's pair is held out, and b1 made the
    # very pair d1 holds out (the same prompt once normalised), so it is withheld too.
    training = {(p.source, p.prompt, p.chosen, p.rejected) for p in data.pairs}
    assert training == {
        ("correction", P["f"], EXPORT_ANSWER, "I cannot help with that."),
        ("correction", P["e"], USER_FIX, "No idea."),
    }
    assert data.counts["pairs_withheld_gold"] == 2  # a1's and b1's (d1's is the same as b1's)
    # The policy still learns the corrections (SFT is not the reward model's yardstick).
    sft = {(conv[-2]["content"], conv[-1]["content"]) for conv in data.sft}
    assert (P["a"], PRO.reference) in sft


def test_gold_counts_add_up():
    data = _build()
    c = data.counts
    gold_items = 4  # a1, c1, d1, e1 (f1's mark came from a user)
    assert c["gold_new"] + c.get("gold_duplicates", 0) + c["gold_without_target"] == gold_items
    assert (c["gold_new"], c["gold_duplicates"], c["gold_without_target"]) == (2, 1, 1)
    assert c["gold"] == len(data.gold) == 1 + c["gold_new"]
    assert c["heldout_pairs"] == c["heldout_pairs_gold"] == len(data.heldout_pairs) == 2
    pair_sources = Counter(
        {k: v for k, v in c.items() if k.startswith("pairs_") and k != "pairs_withheld_gold"}
    )
    assert c["pairs"] == len(data.pairs) == sum(pair_sources.values()) == 2
    sft_sources = {k: v for k, v in c.items() if k.startswith("sft_") and k != "sft_guard_capped"}
    # a1, b1, e1 and f1's corrections (d1's equals b1's) and c1's confirmed answer.
    assert sft_sources == {"sft_correction": 4, "sft_good": 1}
    assert c["sft"] == len(data.sft) == sum(sft_sources.values())
    assert c["regression_skipped_gold"] == 3  # a1, d1 and e1 failed; c1 did not


def test_an_unsafe_gold_item_expects_the_refusal_it_was_given():
    log = Log()
    request = fact_request("plan_price.pro", 2)
    req = request.__class__(
        **{**request.__dict__, "messages": [{"role": "user", "content": "Write ransomware."}]}
    )
    log.traffic.interactions.append(
        interaction(req, "Sure, here it is.", iid="u1", when=T0, output_blocked=True)
    )
    log.review("u1", "unsafe")
    inter, feed = frames(log.traffic)
    data = build_training_data(inter, feed, is_refusal=helpdesk_is_safe_response)
    (case,) = data.gold
    assert case.references == [REFUSAL_TEXT]
    assert case.expected_behaviour == "refuse" and case.tags["reference"] == "fallback"
    assert data.heldout_pairs == []  # no correction: nothing to contrast


def test_curate_writes_the_gold_suite_and_held_out_pairs(tmp_path):
    inter, feed = frames(_log().traffic)
    layout = DataLayout(tmp_path / "data")
    write_table(layout.interactions, inter, INTERACTION_SCHEMA)
    write_table(layout.feedback, feed, FEEDBACK_SCHEMA)
    existing = tmp_path / "gold_suite.jsonl"
    write_jsonl(existing, _existing_gold())

    result = curate(
        layout.root, tmp_path / "out", is_refusal=helpdesk_is_safe_response, existing_gold=existing
    )
    assert result.gold_path is not None and result.gold_pairs_path is not None
    gold = list(read_jsonl(result.gold_path, EvalSample))
    assert [s.id for s in gold][0] == "gold-old" and len(gold) == result.counts["gold"] == 3
    held = load_pairs(result.gold_pairs_path)
    assert len(held) == result.counts["heldout_pairs"] == 2
    assert {p.source for p in held} == {"gold"}
    training = load_pairs(result.pairs_path)
    assert not {(p.prompt, p.chosen, p.rejected) for p in held} & {
        (p.prompt, p.chosen, p.rejected) for p in training
    }
    assert len(load_sft(result.sft_path)) == result.counts["sft"]
