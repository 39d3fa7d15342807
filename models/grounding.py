"""Training rows as the grounded gateway serves them: retrieved facts in the system prompt.

The gateway retrieves knowledge-base facts for every request and puts the best one into
its system prompt (``AugmentSettings.inject_context``). A policy that has only ever seen
bare questions ignores that context; one trained on rows that carry it learns to use it,
which is what lets it answer wording it was never trained on (the retriever is a pretrained
sentence encoder that knows "throttle" is about rate limits; a 5M-parameter model trained
from scratch on the domain does not). It does not make v1 prefer a changed fact in the
context over the answer it memorised; the nightly fine-tune still has to teach the change.

The recipe (:class:`GroundingConfig`'s defaults: the top retrieved fact in 70% of the rows,
half of the rows whose own fact was retrieved made *counterfactual*, so the context states
another plausible value and the answer follows it) and the measurements behind it are in
docs/decisions/0007-grounding-and-context-guidance.md.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import cast

from pydantic import BaseModel, ConfigDict, Field

from loopwright.grounding import EmbedderLike, Fact, KnowledgeIndex, with_facts

Conversation = list[dict[str, str]]
"""A chat as role/content messages (the shape ``examples.helpdesk.records`` writes)."""

Counterfactual = Callable[[str, random.Random], str | None]
"""``(fact id, rng) -> a plausible wrong answer to that fact`` (None: the fact has none)."""


class GroundingConfig(BaseModel):
    """How training rows are grounded (validated, frozen).

    The defaults are the measured recipe: docs/decisions/0007-grounding-and-context-guidance.md.

    Attributes:
        share: fraction of rows that get retrieved facts (the rest stay bare, so the
            model still answers without the gateway).
        top_k: facts per row, best first; must match the gateway's ``inject_top_k``.
        min_score: cosine similarity below which a fact is not used (the gateway's
            ``min_score``).
        counterfactual_share: of the grounded rows whose own fact was retrieved, the
            fraction whose fact (in the context) and answer are both replaced by a
            plausible wrong value, so the answer can only come from the context.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(default=0.7, ge=0, le=1)
    top_k: int = Field(default=1, ge=1, le=32)
    min_score: float = Field(default=0.2, ge=-1, le=1)
    counterfactual_share: float = Field(default=0.5, ge=0, le=1)


@dataclass(frozen=True)
class GroundingStats:
    """What :func:`ground_conversations` did; ``grounded + bare == rows``.

    Attributes:
        rows: conversations in.
        grounded: conversations that got at least one fact.
        bare: conversations left without facts (not drawn, or nothing retrieved).
        own_fact_retrieved: grounded rows whose answer is one of the retrieved facts.
        counterfactual: rows whose fact and answer were replaced.
    """

    rows: int
    grounded: int
    bare: int
    own_fact_retrieved: int
    counterfactual: int


def _last_user(conversation: Conversation) -> str:  # the question retrieval embeds
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def retrieve(
    queries: Sequence[str],
    facts: Sequence[Fact],
    encoder: EmbedderLike,
    top_k: int,
    min_score: float,
) -> list[list[Fact]]:
    """The ``top_k`` best facts for each query, best first, scoring at least ``min_score``.

    The gateway's own retrieval (:class:`loopwright.grounding.KnowledgeIndex`: each fact
    scored by the best of its text and example questions) over the same facts and encoder.

    Returns:
        One list of facts per query (possibly empty).
    """
    if not queries or not facts:
        return [[] for _ in queries]
    hits = fact_index(facts, encoder).search_many(encoder.encode(list(queries)), top_k, min_score)
    return [[fact for fact, _ in found] for found in hits]


def fact_index(facts: Sequence[Fact], encoder: EmbedderLike) -> KnowledgeIndex:
    """The retrieval index of ``facts`` under ``encoder``, built once per pair.

    The bootstrap, the nightly and the benches ground rows in several calls over the same
    few hundred facts; each call re-embedded every key (the example KB: about 8 s on two
    cores). The last few (facts, encoder) pairs are kept; an encoder that cannot be hashed
    gets a fresh index each time.
    """
    frozen = tuple(facts)
    try:
        hash((frozen, encoder))
    except TypeError:  # e.g. an encoder with __eq__ and no __hash__: nothing to key on
        return KnowledgeIndex.build(frozen, encoder)
    return _cached_index(frozen, cast(Hashable, encoder))


@functools.lru_cache(maxsize=4)
def _cached_index(facts: tuple[Fact, ...], encoder: Hashable) -> KnowledgeIndex:
    return KnowledgeIndex.build(facts, cast(EmbedderLike, encoder))


def ground_conversations(
    conversations: Sequence[Conversation],
    facts: Sequence[Fact],
    encoder: EmbedderLike,
    system_prompt: str,
    config: GroundingConfig,
    seed: int,
    counterfactual: Counterfactual | None = None,
) -> tuple[list[Conversation], GroundingStats]:
    """Put the facts the gateway would retrieve into a share of ``conversations``.

    Each drawn row gets the ``config.top_k`` facts most similar to its last user turn
    (at least ``config.min_score``), formatted by :func:`loopwright.grounding.with_facts`
    exactly as the gateway formats them. Where the row's answer *is* a retrieved fact's
    text and ``counterfactual`` gives a wrong answer for that fact, a
    ``counterfactual_share`` of those rows get the wrong answer both in the context and as
    the answer. Deterministic for ``seed``; input order is kept.

    Args:
        conversations: rows ending with the assistant's answer.
        facts: the knowledge base as the gateway retrieves it (texts and questions).
        encoder: the retrieval embedder (the gateway's, or the same pretrained encoder).
        system_prompt: the gateway's system prompt (used where a row has none).
        config: shares and retrieval settings.
        seed: seeds which rows are grounded and which become counterfactual.
        counterfactual: the domain's wrong-answer generator (None: no counterfactuals).

    Returns:
        The rows (grounded or unchanged) and what was done.
    """
    if not conversations:
        return [], GroundingStats(0, 0, 0, 0, 0)
    rng = random.Random(seed)
    retrieved = retrieve(
        [_last_user(c) for c in conversations], facts, encoder, config.top_k, config.min_score
    )
    out: list[Conversation] = []
    grounded = own = swapped = 0
    for conv, hits in zip(conversations, retrieved, strict=True):
        if rng.random() >= config.share:
            out.append([dict(m) for m in conv])
            continue
        if not hits:
            out.append([dict(m) for m in conv])
            continue
        grounded += 1
        texts = [fact.text for fact in hits]
        answer = conv[-1]["content"]
        own_id = next((fact.id for fact in hits if fact.text == answer), None)
        if own_id is not None:
            own += 1
            wrong = counterfactual(own_id, rng) if counterfactual is not None else None
            if wrong is not None and rng.random() < config.counterfactual_share:
                texts = [wrong if text == answer else text for text in texts]
                answer = wrong
                swapped += 1
        body = [*conv[:-1], {**conv[-1], "content": answer}]
        out.append(with_facts(body, texts, system_prompt))
    stats = GroundingStats(
        rows=len(conversations),
        grounded=grounded,
        bare=len(conversations) - grounded,
        own_fact_retrieved=own,
        counterfactual=swapped,
    )
    return out, stats
