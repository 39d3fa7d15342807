"""Fact checking answers against a knowledge base, for feedback screening.

A fact checker is any callable ``(prompt, response) -> FactVerdict``. :class:`KBFactChecker`
builds one from a knowledge base of short canonical answers (each with the entity it is
about and the value it states) and, optionally, the previous revision of that knowledge
base: it turns every canonical answer into a pattern with the entity and the value as
holes, finds the most specific pattern a response sentence matches, and compares the
value there with the knowledge base's.

Verdicts: ``supports`` (states the current value), ``stale`` (states the previous
revision's value), ``contradicts`` (states another value), ``unsupported`` (the answer
pattern about an entity the knowledge base does not hold: a made-up fact), ``unknown``
(no pattern matches: the checker cannot tell).

Why by hand: no library in the stack checks a response against a structured KB; an NLI
model would be far heavier than the few regexes this needs for templated answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Verdict = Literal["supports", "stale", "contradicts", "unsupported", "unknown"]


@dataclass(frozen=True)
class FactVerdict:
    """What a fact checker concluded about a response.

    Attributes:
        verdict: see the module docstring.
        fact_ids: the knowledge-base facts the matched pattern is about.
        stated: the value the response states (None for ``unknown``).
        expected: the current value(s) of those facts.
        relevant: whether the prompt names what those facts are about (None: cannot tell,
            e.g. facts without entities or an empty prompt). A true statement about
            something else is not an answer to the question.

    """

    verdict: Verdict
    fact_ids: tuple[str, ...] = ()
    stated: str | None = None
    expected: tuple[str, ...] = ()
    relevant: bool | None = None

    @property
    def reason(self) -> str:
        """Short reason code, e.g. ``stale:plan_price.pro``."""
        return f"{self.verdict}:{','.join(self.fact_ids)}" if self.fact_ids else self.verdict


class FactChecker(Protocol):
    """Checks one response to one prompt against what is true."""

    def __call__(self, prompt: str, response: str) -> FactVerdict:
        """Return the verdict on ``response`` (``prompt`` is the question it answered)."""
        ...


@dataclass(frozen=True)
class KBFact:
    """One checkable fact.

    Attributes:
        id: stable fact id (same across revisions).
        answer: canonical answer sentence.
        value: the value the answer states (a substring of ``answer``).
        entities: what the fact is about, as they appear in the answer (e.g. a plan name);
            absent ones are ignored.

    """

    id: str
    answer: str
    value: str
    entities: tuple[str, ...] = ()


def _norm(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    return " ".join(text.split()).strip().rstrip(".!").strip()


_HOLE = "\x00"


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    literal_len: int
    has_entity: bool


def _pattern(fact: KBFact) -> _Pattern | None:
    answer = _norm(fact.answer)
    value = _norm(fact.value)
    if not value or value not in answer:
        return None
    before, after = answer.split(value, 1)
    entity_len = 0
    for entity in (_norm(e) for e in fact.entities):
        # One entity hole at most: the answer names what it is about once.
        if not entity or entity == value:
            continue
        if entity in before:
            before = before.replace(entity, _HOLE, 1)
        elif entity in after:
            after = after.replace(entity, _HOLE, 1)
        else:
            continue
        entity_len = len(entity)
        break
    hole = re.escape(_HOLE)
    body = (
        re.escape(before).replace(hole, r"(?P<entity>.+?)")
        + r"(?P<value>.+?)"
        + re.escape(after).replace(hole, r"(?P<entity>.+?)")
    )
    literal = len(answer) - len(value) - entity_len
    return _Pattern(re.compile(body), literal, entity_len > 0)


class KBFactChecker:
    """Fact checker over a knowledge base of templated answers.

    Args:
        current: the facts as they are now.
        previous: the same facts at the previous revision (answers stating these values
            are ``stale``); facts whose value did not change are ignored there.
        min_literal: patterns with fewer fixed characters than this (e.g. "Go to {value}.")
            match too much unrelated text to judge by; only their exact answers are used.

    """

    def __init__(
        self, current: Iterable[KBFact], previous: Iterable[KBFact] = (), *, min_literal: int = 12
    ) -> None:
        self._current = {f.id: f for f in current}
        prev = {f.id: f for f in previous}
        self._previous = {
            fid: f
            for fid, f in prev.items()
            if fid in self._current and _norm(f.value) != _norm(self._current[fid].value)
        }
        # Identical patterns (same answer template, other entity) share one entry.
        groups: dict[str, tuple[_Pattern, list[KBFact]]] = {}
        for fact in self._current.values():
            pat = _pattern(fact)
            if pat is None or pat.literal_len < min_literal:
                continue
            key = pat.regex.pattern
            groups.setdefault(key, (pat, []))[1].append(fact)
        # Most specific first: longer literal text means less left to the holes.
        self._groups = sorted(groups.values(), key=lambda g: -g[0].literal_len)
        self._answers = {_norm(f.answer): f for f in self._current.values()}
        self._stale_answers = {
            _norm(f.answer): f
            for f in self._previous.values()
            if _norm(f.answer) not in self._answers
        }

    def __call__(self, prompt: str, response: str) -> FactVerdict:
        """Check a response; see the module docstring for the verdicts."""
        verdicts = [self._check_sentence(s) for s in _sentences(response)]
        for wanted in ("contradicts", "stale", "unsupported", "supports"):
            for verdict in verdicts:
                if verdict.verdict == wanted:
                    return replace(verdict, relevant=self._relevant(prompt, verdict.fact_ids))
        return FactVerdict("unknown")

    def _relevant(self, prompt: str, fact_ids: tuple[str, ...]) -> bool | None:
        entities = [_norm(e) for fid in fact_ids for e in self._current[fid].entities if e]
        norm = _norm(prompt)
        if not entities or not norm:
            return None
        return any(e in norm for e in entities)

    def _check_sentence(self, sentence: str) -> FactVerdict:
        norm = _norm(sentence)
        if norm in self._answers:
            fact = self._answers[norm]
            return FactVerdict("supports", (fact.id,), fact.value, (fact.value,))
        if norm in self._stale_answers:
            old = self._stale_answers[norm]
            return FactVerdict("stale", (old.id,), old.value, (self._current[old.id].value,))
        for pattern, facts in self._groups:
            match = pattern.regex.fullmatch(norm)
            if match is None:
                continue
            stated = match["value"].strip()
            if pattern.has_entity:
                entity = match["entity"].strip()
                facts = [f for f in facts if any(_norm(e) == entity for e in f.entities)]
                if not facts:
                    return FactVerdict("unsupported", (), stated, ())
            ids = tuple(f.id for f in facts)
            expected = tuple(f.value for f in facts)
            if any(_norm(f.value) == stated for f in facts):
                return FactVerdict("supports", ids, stated, expected)
            if any(
                f.id in self._previous and _norm(self._previous[f.id].value) == stated
                for f in facts
            ):
                return FactVerdict("stale", ids, stated, expected)
            return FactVerdict("contradicts", ids, stated, expected)
        return FactVerdict("unknown")


def _sentences(text: str) -> list[str]:
    # Split on sentence ends followed by a capital letter, keeping "$0.018" and "v2.1" whole.
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())
    return [p for p in parts if p.strip()]
