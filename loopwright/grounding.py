"""Retrieval grounding as served: one retriever and one format for serving and training.

The gateway retrieves knowledge-base facts for a request (:class:`KnowledgeIndex`) and
appends the best ones to its system prompt (:func:`system_with_facts`); a policy trained to
read them must see exactly the facts and the text the gateway would give it, or it learns
a retrieval and a format it never gets. The gateway, the bootstrap's and the nightly's
training-row grounding (``models.grounding``) and the benchmarks all call these, so both
live in one place.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

FACTS_HEADER = "\nFacts:\n"
"""What separates the system prompt from the facts (one ``- fact`` line each follows)."""


class EmbedderLike(Protocol):
    """A sentence embedder returning L2-normalised vectors (all retrieval needs of one)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Array of shape (len(texts), dim), rows normalised."""
        ...


def system_with_facts(system_prompt: str, fact_texts: Sequence[str]) -> str:
    """The system prompt with the retrieved facts appended, best first (none: unchanged)."""
    if not fact_texts:
        return system_prompt
    return system_prompt + FACTS_HEADER + "\n".join(f"- {text}" for text in fact_texts)


def facts_in(messages: Sequence[dict[str, str]]) -> list[str]:
    """The fact texts a conversation's system message carries (inverse of :func:`with_facts`)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if FACTS_HEADER not in system:
        return []
    block = system.split(FACTS_HEADER, 1)[1]
    return [line[2:] for line in block.splitlines() if line.startswith("- ")]


def without_facts(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with the retrieved facts taken out of the system message.

    The prompt the model would have had without retrieval (the system prompt kept): the
    "no context" side of context-contrastive decoding
    (``models.generation.DecodingParams.context_guidance``). Unchanged if there are none.
    """
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system" and FACTS_HEADER in out[0]["content"]:
        out[0]["content"] = out[0]["content"].split(FACTS_HEADER, 1)[0]
    return out


def with_facts(
    messages: Sequence[dict[str, str]], fact_texts: Sequence[str], system_prompt: str
) -> list[dict[str, str]]:
    """``messages`` as the gateway sends them to the model with ``fact_texts`` retrieved.

    A conversation that already starts with a system message (the gateway's prompt, in
    training data written as served) gets the facts appended to it; otherwise
    ``system_prompt`` with the facts goes first, as the gateway puts it.
    """
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = system_with_facts(out[0]["content"], fact_texts)
        return out
    return [{"role": "system", "content": system_with_facts(system_prompt, fact_texts)}, *out]


@dataclass(frozen=True)
class Fact:
    """One knowledge-base fact: a stable id, its text, and questions it answers.

    Attributes:
        id: stable identifier (logged as the retrieved context id).
        text: what the gateway injects and the grounding rail checks answers against.
        questions: example questions the fact answers (an FAQ's variants), extra retrieval
            keys besides ``text``; empty means the fact is found by its text alone.
    """

    id: str
    text: str
    questions: tuple[str, ...] = ()


class KnowledgeIndex:
    """Dense retrieval over facts by cosine similarity, each fact under several keys.

    A fact's keys are its text and its example questions; its score for a query is the best
    of its keys' cosine similarities. A question is closer to another wording of itself
    than to the statement that answers it, so the question keys put the right fact first far
    more often (docs/decisions/0007-grounding-and-context-guidance.md). Hand-written because
    no well-kept library offers max-over-keys scoring for a few thousand in-memory vectors
    without a server; the search is one matrix product.

    Args:
        facts: the facts (ids unique).
        vectors: key embeddings, rows normalised, in :meth:`keys` order (each fact's text,
            then its questions, fact after fact).

    Raises:
        ValueError: duplicate ids, or not one vector per key.
    """

    def __init__(self, facts: Sequence[Fact], vectors: np.ndarray) -> None:
        ids = [f.id for f in facts]
        if len(set(ids)) != len(ids):
            raise ValueError("fact ids must be unique")
        self.facts = list(facts)
        keys_per_fact = [1 + len(f.questions) for f in self.facts]
        if sum(keys_per_fact) != len(vectors):
            raise ValueError(
                f"{sum(keys_per_fact)} keys (texts and questions) but {len(vectors)} vectors"
            )
        self.vectors = np.asarray(vectors, dtype=np.float32)
        # Keys are grouped by fact, so each fact's best key is one reduceat segment.
        self._starts = np.cumsum([0, *keys_per_fact[:-1]])
        self._by_id = {f.id: f for f in self.facts}

    @staticmethod
    def keys(facts: Sequence[Fact]) -> list[str]:
        """The texts embedded for ``facts``: each fact's text, then its questions."""
        return [key for f in facts for key in (f.text, *f.questions)]

    @classmethod
    def build(
        cls, facts: Sequence[Fact], embedder: EmbedderLike, batch: int = 64
    ) -> KnowledgeIndex:
        """Embed every key of ``facts`` with ``embedder``."""
        keys = cls.keys(facts)
        parts = [embedder.encode(keys[i : i + batch]) for i in range(0, len(keys), batch)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
        return cls(facts, vectors)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Each fact's score for each query vector: (queries, facts) best-key similarities."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if not self.facts:
            return np.zeros((len(queries), 0), dtype=np.float32)
        sims = queries @ self.vectors.T
        return np.maximum.reduceat(sims, self._starts, axis=1)

    def search(self, vector: np.ndarray, k: int, min_score: float) -> list[tuple[Fact, float]]:
        """The ``k`` best facts with score at least ``min_score``, best first."""
        return self.search_many(np.atleast_2d(vector), k, min_score)[0]

    def search_many(
        self, vectors: np.ndarray, k: int, min_score: float
    ) -> list[list[tuple[Fact, float]]]:
        """:meth:`search` for each row of ``vectors`` (one matrix product for all)."""
        if not self.facts:
            return [[] for _ in range(len(vectors))]
        scores = self.scores(vectors)
        k = min(k, len(self.facts))
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top], kind="stable")]
            out.append([(self.facts[i], float(row[i])) for i in top if row[i] >= min_score])
        return out

    def get(self, fact_id: str) -> Fact | None:
        """The fact with this id, if any."""
        return self._by_id.get(fact_id)


def load_facts_jsonl(path: str | Path) -> list[Fact]:
    """Facts from a JSONL file of ``{"id", "text"}`` objects, optionally ``"questions"``.

    ``questions`` is a list of strings: example questions the fact answers, used as extra
    retrieval keys (:class:`KnowledgeIndex`).

    Raises:
        ValueError: a line is not such an object (the message names file and line).
    """
    facts = []
    path = Path(path)
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            questions = data.get("questions", [])
            if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
                raise TypeError(f"questions must be a list of strings, got {questions!r}")
            facts.append(
                Fact(id=str(data["id"]), text=str(data["text"]), questions=tuple(questions))
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f'{path}:{lineno}: expected {{"id", "text", optional "questions"}} ({exc})'
            ) from exc
    return facts
