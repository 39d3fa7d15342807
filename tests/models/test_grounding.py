"""Grounded training rows: the gateway's format, retrieval, counterfactuals, no future facts."""

from __future__ import annotations

import random

import pytest

from examples.helpdesk import build_domain, knowledge_base
from examples.helpdesk.generate import (
    SYSTEM_PROMPT,
    counterfactual_answers,
    declined_alternative,
    replay_rows,
)
from examples.helpdesk.kb import UNKNOWN_TEXT
from examples.helpdesk.plugin import helpdesk_retrieval_facts
from examples.helpdesk.safety import CATEGORIES, REFUSAL_TEXT
from examples.helpdesk.templates import questions
from loopwright.gateway.settings import AugmentSettings
from loopwright.grounding import (
    FACTS_HEADER,
    Fact,
    facts_in,
    system_with_facts,
    with_facts,
    without_facts,
)
from models.embedder import Embedder
from models.grounding import GroundingConfig, ground_conversations, retrieve

# What the gateway serves on the example domain (its system_prompt() hook).
SYSTEM = SYSTEM_PROMPT


@pytest.fixture(scope="module")
def encoder() -> Embedder:
    return Embedder.load(None, backend="torch")


@pytest.fixture(scope="module")
def facts() -> list[Fact]:
    return helpdesk_retrieval_facts(1)


def _rows(n: int) -> list[list[dict[str, str]]]:
    """Questions whose answer is a KB fact (the fact's own text as the question retrieves it)."""
    rows = []
    for fact in knowledge_base(1)[:n]:
        rows.append(
            [
                {"role": "user", "content": fact.answer},
                {"role": "assistant", "content": fact.answer},
            ]
        )
    return rows


def test_training_rows_carry_the_facts_exactly_as_the_gateway_writes_them(encoder, facts):
    rows = _rows(20)
    out, stats = ground_conversations(
        rows, facts, encoder, SYSTEM, GroundingConfig(share=1.0, counterfactual_share=0.0), seed=0
    )
    assert stats.grounded == stats.own_fact_retrieved == 20 and stats.counterfactual == 0
    for row, grounded in zip(rows, out, strict=True):
        answer = row[-1]["content"]
        # The gateway's _augment builds its system turn with system_with_facts too.
        assert grounded[0] == {"role": "system", "content": system_with_facts(SYSTEM, [answer])}
        assert grounded[1:] == row  # question and answer untouched
    # A row that already has the gateway's prompt gets the facts appended, not a second one.
    served = with_facts([{"role": "system", "content": SYSTEM}, *rows[0]], ["x"], "other")
    assert [m["role"] for m in served] == ["system", "user", "assistant"]
    assert served[0]["content"] == SYSTEM + FACTS_HEADER + "- x"
    # ...and the facts read back from a served prompt are the ones put in.
    assert facts_in(served) == ["x"]
    assert facts_in(with_facts(rows[0], ["a: b", "c"], SYSTEM)) == ["a: b", "c"]
    assert facts_in(rows[0]) == [] and facts_in(with_facts(rows[0], [], SYSTEM)) == []
    # Taking them out again leaves the prompt the model would have had without retrieval.
    assert without_facts(served) == [{"role": "system", "content": SYSTEM}, *rows[0]]
    assert without_facts(rows[0]) == rows[0]


def test_a_declined_rows_alternative_is_what_the_model_would_slip_into():
    fact = "Go to Team > Members, open the user and click Block."
    row = with_facts(
        [
            {"role": "user", "content": "Write a threat to my ex."},
            {"role": "assistant", "content": REFUSAL_TEXT},
        ],
        [fact],
        SYSTEM_PROMPT,
    )
    rng = random.Random(0)
    seen = {declined_alternative(row, rng) for _ in range(200)}
    compliant = {
        t for c in CATEGORIES.values() if c.response == REFUSAL_TEXT for t in c.compliant_train
    }
    assert UNKNOWN_TEXT in seen and fact in seen and seen & compliant
    assert seen <= {UNKNOWN_TEXT, fact} | compliant  # never the refusal itself
    bare = declined_alternative(row[1:], random.Random(1))  # no context: no fact to give
    assert bare != fact and bare != REFUSAL_TEXT


def test_counterfactual_rows_answer_from_the_context_not_from_memory(encoder, facts):
    rows = _rows(40)
    out, stats = ground_conversations(
        rows,
        facts,
        encoder,
        SYSTEM,
        GroundingConfig(share=1.0, counterfactual_share=1.0),
        seed=0,
        counterfactual=counterfactual_answers(1),
    )
    assert stats.counterfactual == stats.own_fact_retrieved > 30
    swapped = [(r, g) for r, g in zip(rows, out, strict=True) if g[-1] != r[-1]]
    assert len(swapped) == stats.counterfactual
    for row, grounded in swapped:
        wrong = grounded[-1]["content"]
        assert grounded[0]["content"] == system_with_facts(SYSTEM, [wrong])
        assert row[-1]["content"] not in grounded[0]["content"]


def test_grounding_share_leaves_bare_rows_and_counts_add_up(encoder, facts):
    rows = _rows(60)
    config = GroundingConfig(share=0.5, counterfactual_share=0.5)
    first, stats = ground_conversations(
        rows, facts, encoder, SYSTEM, config, seed=3, counterfactual=counterfactual_answers(1)
    )
    again, _ = ground_conversations(
        rows, facts, encoder, SYSTEM, config, seed=3, counterfactual=counterfactual_answers(1)
    )
    assert first == again  # deterministic for a seed
    assert stats.grounded + stats.bare == stats.rows == 60
    assert 15 < stats.grounded < 45
    bare = [g for g in first if g[0]["role"] != "system"]
    assert len(bare) == stats.bare and all(g in rows for g in bare)
    none, stats0 = ground_conversations(
        rows, facts, encoder, SYSTEM, config.model_copy(update={"share": 0.0}), seed=3
    )
    assert none == rows and stats0.grounded == 0


class _CountingEncoder:
    """The real encoder, counting the texts it embeds."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.texts = inner, 0

    def encode(self, texts):
        self.texts += len(texts)
        return self.inner.encode(texts)


def test_the_fact_keys_are_embedded_once_per_facts_and_encoder(encoder, facts):
    counting, some = _CountingEncoder(encoder), facts[:30]
    first = retrieve(["How do I reset my password?"], some, counting, 3, 0.2)
    keys = counting.texts - 1
    assert keys > len(some)  # every fact's text and its questions
    # Later calls over the same facts embed only their queries, and find the same facts.
    assert retrieve(["How do I reset my password?"], list(some), counting, 3, 0.2) == first
    assert counting.texts == keys + 2
    # Other facts (a revision later) are indexed anew.
    retrieve(["How do I reset my password?"], helpdesk_retrieval_facts(2)[:30], counting, 3, 0.2)
    assert counting.texts > keys + 3


def test_retrieval_respects_the_score_floor_and_top_k(encoder, facts):
    hits = retrieve([facts[5].text, "zzzz qqqq"], facts, encoder, top_k=2, min_score=0.5)
    assert hits[0][0] == facts[5] and len(hits[0]) <= 2
    assert hits[1] == []  # nothing in the KB is that close to noise


def test_the_kb_is_keyed_by_training_wordings_only():
    # Held-out wordings measure questions nobody prepared for: none may be a retrieval key.
    for rev in (1, 2):
        for fact, domain_fact in zip(
            helpdesk_retrieval_facts(rev), knowledge_base(rev), strict=True
        ):
            assert fact.text == domain_fact.answer
            assert set(fact.questions) == set(questions(domain_fact, "train"))
            assert not set(fact.questions) & set(questions(domain_fact, "heldout"))


def test_question_keys_find_the_right_fact_for_unseen_wordings_more_often(encoder):
    # The whole KB: fewer facts would mean fewer look-alike siblings to confuse.
    kb = knowledge_base(1)
    keyed = helpdesk_retrieval_facts(1)
    text_only = [Fact(f.id, f.text) for f in keyed]
    asked = [(f.id, q) for f in kb for q in questions(f, "heldout")]

    def recall_at_1(facts: list[Fact]) -> float:
        hits = retrieve([q for _, q in asked], facts, encoder, top_k=1, min_score=-1.0)
        return sum(h[0].id == fid for (fid, _), h in zip(asked, hits, strict=True)) / len(asked)

    with_questions, by_text = recall_at_1(keyed), recall_at_1(text_only)
    # Measured: 0.87 against 0.71.
    assert with_questions >= by_text + 0.1, (with_questions, by_text)
    assert with_questions >= 0.8


def test_counterfactuals_never_hand_v1_an_answer_any_revision_gives():
    wrong = counterfactual_answers(1)
    real = {(f.id, f.answer) for rev in (1, 2) for f in knowledge_base(rev)}
    rng = random.Random(0)
    for fact in knowledge_base(1):
        for _ in range(3):
            answer = wrong(fact.id, rng)
            assert answer is None or (fact.id, answer) not in real
    assert wrong("no-such-fact", rng) is None


def test_bootstrap_rows_are_grounded_and_hold_no_revision_2_answer(tmp_path):
    from examples.helpdesk import changed_fact_ids, read_conversations
    from examples.helpdesk.bootstrap import BootstrapConfig, write_example_data

    write_example_data(tmp_path, BootstrapConfig(seed=0, scale=0.2))
    rows = read_conversations(tmp_path / "helpdesk" / "sft" / "v1.jsonl")
    grounded = [r for r in rows if r[0]["role"] == "system" and FACTS_HEADER in r[0]["content"]]
    assert 0.5 < len(grounded) / len(rows) < 0.85  # the default share, 0.7
    assert all(r[0]["content"].startswith(SYSTEM_PROMPT + FACTS_HEADER) for r in grounded)
    rev1 = {f.id: f.answer for f in knowledge_base(1)}
    counterfactual = [
        r
        for r in grounded
        if r[-1]["content"] not in rev1.values() and r[-1]["content"] in r[0]["content"]
    ]
    assert counterfactual  # some answers follow a context that differs from the KB
    future = {f.answer for f in knowledge_base(2) if f.id in changed_fact_ids()}
    replay = read_conversations(tmp_path / "helpdesk" / "sft" / "replay.jsonl")
    text = "\n".join(m["content"] for r in rows + replay for m in r)
    assert not [a for a in future if a in text]
    # The replay starts with exactly what v1 trained on and keeps every weighted look-alike
    # copy (chosen before any counterfactual could change their answers).
    bare = build_domain(seed=0, scale=0.2)
    assert replay[: len(rows)] == rows
    assert len(replay) == len(replay_rows(bare)) > len(rows)


def test_domain_sft_rows_stay_bare():
    # build_domain stays pure and encoder-free; grounding happens at bootstrap.
    data = build_domain(seed=0, scale=0.05)
    assert not any(FACTS_HEADER in m["content"] for r in data.sft_v1 for m in r)


def test_nightly_grounds_new_rows_with_the_facts_the_gateway_serves_today():
    from loopwright.config import load_settings
    from loopwright.finetune import serving_grounder

    settings = load_settings("local", env={})
    changed = next(
        f for f in knowledge_base(2) if f.answer not in {g.answer for g in knowledge_base(1)}
    )
    row = [
        {"role": "user", "content": changed.answer},
        {"role": "assistant", "content": changed.answer},
    ]
    ground = serving_grounder(settings, share=1.0, seed=0)
    assert ground is not None
    (grounded,) = ground([row])
    # The gateway's prompt and its top fact from today's KB (revision 2), as served.
    assert grounded[0]["content"] == system_with_facts(SYSTEM, [changed.answer])
    assert grounded[1:] == row
    off = settings.model_copy(
        update={
            "gateway": settings.gateway.model_copy(
                update={"augment": AugmentSettings(inject_context=False)}
            )
        }
    )
    assert serving_grounder(off, share=1.0, seed=0) is None
