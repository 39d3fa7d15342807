"""The gateway's knowledge index: facts found by their text or by their example questions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from loopwright.grounding import Fact, KnowledgeIndex, load_facts_jsonl

WORDS = ("price", "plan", "backup", "days", "region", "password", "reset", "limit")


class BagOfWords:
    """A deterministic encoder: normalised counts of a few words (enough to rank keys)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.array(
            [[text.lower().split().count(w) for w in WORDS] for text in texts], dtype=np.float32
        )
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


FACTS = [
    Fact("price", "plan price plan price", questions=("price price plan",)),
    Fact("backup", "backup days", questions=("password reset",)),  # a question unlike its text
    Fact("region", "region region"),
]


def test_a_fact_scores_by_its_best_key():
    index = KnowledgeIndex.build(FACTS, BagOfWords())
    enc = BagOfWords()
    # "password reset" is nowhere in the backup fact's text, but it is one of its questions.
    ((fact, score),) = index.search(enc.encode(["password reset"])[0], k=1, min_score=0.5)
    assert fact.id == "backup" and score == pytest.approx(1.0)
    # Scores are the best key's similarity, one column per fact, in fact order.
    scores = index.scores(enc.encode(["plan price", "region"]))
    assert scores.shape == (2, 3)
    assert scores[1].tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert scores[0, 0] == pytest.approx(1.0)  # its text has the same words in proportion


def test_search_keeps_the_floor_and_k_and_matches_search_many():
    index = KnowledgeIndex.build(FACTS, BagOfWords())
    enc = BagOfWords()
    queries = enc.encode(["plan price region", "nothing known here"])
    many = index.search_many(queries, k=2, min_score=0.1)
    assert [f.id for f, _ in many[0]] == ["price", "region"]
    assert many[1] == []  # nothing scores above the floor
    assert index.search(queries[0], k=2, min_score=0.1) == many[0]
    assert [f.id for f, _ in index.search(queries[0], k=1, min_score=0.1)] == ["price"]
    empty = KnowledgeIndex.build([], BagOfWords())
    assert empty.search(queries[0], 3, 0.0) == [] and empty.scores(queries).shape == (2, 0)


def test_index_refuses_duplicate_ids_and_misaligned_vectors():
    with pytest.raises(ValueError, match="unique"):
        KnowledgeIndex([Fact("a", "x"), Fact("a", "y")], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="3 keys"):
        KnowledgeIndex([Fact("a", "x", questions=("q1", "q2"))], np.zeros((1, 4)))


def test_facts_file_takes_optional_questions_and_names_the_bad_line(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text(
        '{"id": "a", "text": "Backups are kept 30 days."}\n\n'
        '{"id": "b", "text": "Resets take a minute.", "questions": ["How do I reset?"]}\n',
        encoding="utf-8",
    )
    assert load_facts_jsonl(path) == [
        Fact("a", "Backups are kept 30 days."),
        Fact("b", "Resets take a minute.", questions=("How do I reset?",)),
    ]
    path.write_text('{"id": "a", "text": "t", "questions": "How?"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"kb.jsonl:1: .*list of strings"):
        load_facts_jsonl(path)
    path.write_text('{"id": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"kb.jsonl:1: expected"):
        load_facts_jsonl(path)
