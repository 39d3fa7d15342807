"""Feedback screening: injection, personal data and poisoning, before feedback can teach.

Feedback is what the nightly loop learns from, so it is an attack surface: a user who
rates unsafe compliance up, rates stale or false answers up, or writes corrections that
carry injection text or personal data is trying to train the model. Every feedback event
of a validated batch is screened with:

* **the guard** (any object with ``scores(texts) -> list[{label: prob}]``, e.g.
  ``models.guard.Guard``; labels ``harmful`` and ``injection`` are read) on the prompt,
  the rated response and any text the event would make a training target;
* **rules**: personal data (e-mail addresses, phone numbers, card numbers that pass the
  Luhn check, US social-security numbers) and known injection phrases;
* **a fact checker** (``(prompt, response) -> FactVerdict``, see
  :mod:`loopwright.data.factcheck`) for ratings that reward false or stale facts and
  corrections that teach them;
* **batch anomalies**: a burst of feedback from one author, and a sudden shift of the
  positive-rating rate against recent committed batches.

Suspicious events are quarantined with their reasons; interactions whose prompt carries
personal data are quarantined with their feedback (they would put it in training data).
A batch fails (and is rejected whole) when the share of suspicious feedback exceeds
:attr:`ScreeningConfig.max_suspicious_fraction` or a batch anomaly fires.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopwright.data.batches import (
    BatchError,
    load_manifest,
    read_staged,
    reject_batch,
    save_manifest,
    write_staged,
)
from loopwright.data.factcheck import FactChecker, FactVerdict
from loopwright.data.tables import DataLayout, append_quarantine, rows_to_quarantine

logger = logging.getLogger(__name__)

STAGE = "screen"


class GuardScorer(Protocol):
    """A safety classifier: per text, a probability per label (``harmful``, ``injection``...)."""

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Score a batch of texts, in order."""
        ...


# ----------------------------------------------------------------------------- rules

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# 555-0134, 555 123 4567, (555) 123-4567, +1 555 123 4567, +44 20 7946 0958
_PHONE = re.compile(
    r"(?<![\w$.,])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])?\d{3}[\s.-]\d{4}(?![\w%])"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")

DEFAULT_INJECTION_PATTERNS: tuple[str, ...] = (
    r"\bignore (?:all |any |the )?(?:previous|prior|above|earlier|your) "
    r"(?:instructions|rules|prompts?)",
    r"\bignore your rules\b",
    r"\bdisregard (?:all |any |the |your )?(?:previous |prior |safety )?"
    r"(?:instructions|rules|guidelines)",
    r"\b(?:reveal|print|show|repeat) (?:me )?(?:your|the) (?:system|hidden) prompt",
    r"\bsystem override\b",
    r"\byou are now (?:an? )?(?:unrestricted|unfiltered|jailbroken|dan)\b",
    r"\b(?:developer|god|dan) mode\b",
    r"\bsafety (?:filters?|rules) (?:are |is )?(?:disabled|off)\b",
    r"\bfrom now on,? (?:always|you will|you must|ignore)",
    r"\badmin password\b",
)
DEFAULT_REFUSAL_MARKERS: tuple[str, ...] = (
    "can't help",
    "cannot help",
    "can't assist",
    "cannot assist",
    "won't help",
    "unable to help",
    "not able to help",
    "i won't",
    "i refuse",
    "crisis line",
    "helpline",
    "someone you trust",
)


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (all payment card numbers do)."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str, allow: Sequence[re.Pattern[str]] = ()) -> list[str]:
    """Kinds of personal data in ``text``: ``email``, ``phone``, ``card``, ``ssn`` (sorted).

    Args:
        text: any text.
        allow: patterns of matches that are not personal (e.g. the company's own
            support address); a match that any of them ``search``-es is ignored.

    A card number must be 13-19 digits (spaces or dashes allowed) and pass the Luhn check,
    so order numbers and other long digit runs are not flagged.
    """
    found: set[str] = set()

    def allowed(match: str) -> bool:
        return any(p.search(match) for p in allow)

    if any(not allowed(m.group()) for m in _EMAIL.finditer(text)):
        found.add("email")
    for m in _CARD.finditer(text):
        if luhn_valid(re.sub(r"\D", "", m.group())) and not allowed(m.group()):
            found.add("card")
    if any(not allowed(m.group()) for m in _SSN.finditer(text)):
        found.add("ssn")
    masked = _CARD.sub(" ", _SSN.sub(" ", text))  # a card or SSN is not also a phone
    if any(not allowed(m.group()) for m in _PHONE.finditer(masked)):
        found.add("phone")
    return sorted(found)


def find_injection(text: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """Whether ``text`` contains a known injection phrase (case-insensitive patterns)."""
    return any(p.search(text) for p in patterns)


def marker_refusal(markers: Sequence[str] = DEFAULT_REFUSAL_MARKERS) -> Callable[[str], bool]:
    """A refusal detector that looks for any of ``markers`` (case-insensitive)."""
    lowered = tuple(m.lower() for m in markers)

    def is_refusal(text: str) -> bool:
        norm = " ".join(text.lower().replace("\u2019", "'").split())
        return any(m in norm for m in lowered)

    return is_refusal


# ----------------------------------------------------------------------------- config


class ScreeningConfig(BaseModel):
    """Thresholds of feedback screening.

    Attributes:
        guard_threshold: a text is harmful / injection when the guard's probability for
            that label is at least this, in (0, 1].
        max_suspicious_fraction: a batch fails when more than this share of its feedback
            is suspicious, in [0, 1].
        burst_min_events / burst_max_share: an author (source ``user``) with at least
            ``burst_min_events`` events and more than ``burst_max_share`` of the batch's
            feedback is a burst; all their events are suspicious.
        rate_history: committed batches the positive-rate check compares to.
        max_positive_rate_shift: a batch fails when its share of +1 ratings differs from
            the history's mean by more than this.
        min_ratings_for_shift: below this many ratings the rate check is skipped.
        pii_allow: regexes of matches that are not personal data (e.g. the support address).
        injection_patterns: regexes of injection phrases (case-insensitive).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    guard_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    max_suspicious_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    burst_min_events: int = Field(default=20, ge=1)
    burst_max_share: float = Field(default=0.25, gt=0.0, le=1.0)
    rate_history: int = Field(default=7, ge=1)
    max_positive_rate_shift: float = Field(default=0.35, gt=0.0, le=1.0)
    min_ratings_for_shift: int = Field(default=20, ge=1)
    pii_allow: tuple[str, ...] = ()
    injection_patterns: tuple[str, ...] = DEFAULT_INJECTION_PATTERNS

    def compiled_allow(self) -> list[re.Pattern[str]]:
        """``pii_allow`` compiled."""
        return [re.compile(p, re.IGNORECASE) for p in self.pii_allow]

    def compiled_injection(self) -> list[re.Pattern[str]]:
        """``injection_patterns`` compiled."""
        return [re.compile(p, re.IGNORECASE) for p in self.injection_patterns]


@dataclass(frozen=True)
class ScreeningReport:
    """What screening found on two frames (pure: touches no table).

    Attributes:
        interaction_reasons / feedback_reasons: frame index label -> reasons.
        batch_reasons: batch anomalies that fail the batch.
        notes: checks skipped and why.
        positive_rate: share of +1 among the batch's ratings (None without ratings).

    """

    interaction_reasons: dict[Any, list[str]]
    feedback_reasons: dict[Any, list[str]]
    batch_reasons: list[str]
    notes: list[str]
    positive_rate: float | None


@dataclass(frozen=True)
class ScreeningResult:
    """The verdict of screening one batch.

    Attributes:
        passed: the batch may be committed.
        suspicious_fraction: suspicious feedback events / feedback events.
        reasons: why it failed (empty when it passed).
        counts: ``feedback``, ``suspicious_feedback``, ``interactions``,
            ``quarantined_interactions``, ``accepted`` and ``quarantined`` rows
            (``accepted + quarantined`` = rows screened).
        by_reason: reason code -> events flagged with it.
        notes: skipped checks.
        batch: the batch number.

    """

    passed: bool
    suspicious_fraction: float
    reasons: list[str]
    counts: dict[str, int]
    by_reason: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    batch: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScreeningResult:
        """Inverse of :meth:`to_json`."""
        return cls(**data)


# ----------------------------------------------------------------------------- screening


class _Texts:
    """Score each distinct text once with the guard (one batched call)."""

    def __init__(self, guard: GuardScorer, texts: Sequence[str], threshold: float) -> None:
        unique = sorted({t for t in texts if t})
        scores = guard.scores(unique) if unique else []
        if len(scores) != len(unique):
            raise ValueError(f"guard returned {len(scores)} scores for {len(unique)} texts")
        self._scores = dict(zip(unique, scores, strict=True))
        self._t = threshold

    def flagged(self, text: str | None, label: str) -> bool:
        if not text:
            return False
        return self._scores.get(text, {}).get(label, 0.0) >= self._t


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def screen_frames(
    interactions: pd.DataFrame,
    feedback: pd.DataFrame,
    guard: GuardScorer,
    fact_checker: FactChecker,
    config: ScreeningConfig,
    *,
    history_rates: Sequence[float] = (),
    is_refusal: Callable[[str], bool] | None = None,
) -> ScreeningReport:
    """Screen a batch's frames (see the module docstring for the rules).

    Args:
        interactions: the batch's interactions (schema of :mod:`loopwright.data.tables`).
        feedback: the batch's feedback; it refers to ``interactions`` (ingest joins them).
        guard: the safety classifier.
        fact_checker: ``(prompt, response) -> FactVerdict``.
        config: thresholds.
        history_rates: positive-rating rates of recent committed batches.
        is_refusal: whether a response declines (or safely redirects) a request;
            default :func:`marker_refusal`.

    """
    is_refusal = is_refusal or marker_refusal()
    allow = config.compiled_allow()
    injection = config.compiled_injection()
    prompts = dict(zip(interactions["id"], interactions["prompt"], strict=True))
    responses = dict(zip(interactions["id"], interactions["response"], strict=True))

    targets = list(feedback["text"].dropna()) + list(feedback["chosen"].dropna())
    texts = _Texts(
        guard,
        [*prompts.values(), *(r for r in responses.values() if isinstance(r, str)), *targets],
        config.guard_threshold,
    )
    fact_cache: dict[tuple[str, str], FactVerdict] = {}

    def facts(prompt: str, response: str) -> FactVerdict:
        key = (prompt, response)
        if key not in fact_cache:
            fact_cache[key] = fact_checker(prompt, response)
        return fact_cache[key]

    interaction_reasons: dict[Any, list[str]] = {}
    for label, prompt in interactions["prompt"].items():
        pii = find_pii(str(prompt), allow) if isinstance(prompt, str) else []
        if pii:
            interaction_reasons[label] = [f"pii:prompt:{kind}" for kind in pii]
    pii_prompt_ids = (
        set(interactions.loc[list(interaction_reasons), "id"]) if interaction_reasons else set()
    )

    def target_reasons(kind: str, text: str, prompt: str) -> list[str]:
        """Checks on a text the event would make a training target."""
        out = [f"pii:{kind}:{p}" for p in find_pii(text, allow)]
        if find_injection(text, injection) or texts.flagged(text, "injection"):
            out.append(f"poison:{kind}_injection")
        if texts.flagged(text, "harmful") and not is_refusal(text):
            out.append(f"poison:{kind}_harmful")
        verdict = facts(prompt, text)
        if verdict.verdict in ("stale", "contradicts", "unsupported"):
            out.append(f"poison:{kind}_false_fact:{verdict.verdict}")
        return out

    batch_reasons: list[str] = []
    notes: list[str] = []
    feedback_reasons: dict[Any, list[str]] = {}
    for label, row in feedback.iterrows():
        iid = row["interaction_id"]
        why: list[str] = []
        if iid in pii_prompt_ids:
            why.append("interaction_quarantined")
        prompt = str(prompts.get(iid, "") or "")
        response = _text(responses.get(iid))
        kind = row["kind"]
        positive = (kind == "rating" and row["rating"] > 0) or (
            kind == "reviewer_label" and row["label"] == "good"
        )
        negative = kind == "rating" and row["rating"] < 0
        prompt_risky = texts.flagged(prompt, "harmful") or texts.flagged(prompt, "injection")
        if positive and response is not None:
            why += [f"pii:response:{p}" for p in find_pii(response, allow)]
            verdict = facts(prompt, response)
            if find_injection(response, injection) or texts.flagged(response, "injection"):
                why.append("poison:rewards_injection")
            refused = is_refusal(response)
            compliant = texts.flagged(response, "harmful") or (prompt_risky and not refused)
            if compliant and verdict.verdict != "supports":
                why.append("poison:rewards_harmful_compliance")
            if verdict.verdict in ("stale", "contradicts", "unsupported"):
                why.append(f"poison:rewards_false_fact:{verdict.verdict}")
        elif negative and response is not None:
            # Punishing a verified answer to the question asked teaches the opposite of the
            # truth; honest users' flipped thumbs land here too (label noise, also unwanted).
            verdict = facts(prompt, response)
            if verdict.verdict == "supports" and verdict.relevant:
                why.append("suspicious:penalises_verified_answer")
        elif kind == "correction" and _text(row["text"]):
            why += target_reasons("correction", str(row["text"]), prompt)
        elif kind == "preference" and _text(row["chosen"]):
            why += target_reasons("preference", str(row["chosen"]), prompt)
        if why:
            feedback_reasons[label] = why

    users = feedback[feedback["source"] == "user"]
    n_feedback = len(feedback)
    for author, count in users["author"].value_counts().items():
        if count >= config.burst_min_events and count > config.burst_max_share * n_feedback:
            # One author's burst is quarantined; it fails the batch only through the
            # suspicious fraction (a burst big enough to matter exceeds it).
            for label in users.index[users["author"] == author]:
                feedback_reasons.setdefault(label, []).append("anomaly:author_burst")
            notes.append(f"author burst: {author} left {count} of {n_feedback} feedback events")
    ratings = feedback.loc[feedback["kind"] == "rating", "rating"].dropna()
    positive_rate = float((ratings > 0).mean()) if len(ratings) else None
    if positive_rate is None or len(ratings) < config.min_ratings_for_shift:
        notes.append(
            f"positive-rate shift skipped: {len(ratings)} ratings, needs "
            f"{config.min_ratings_for_shift}"
        )
    elif not history_rates:
        notes.append("positive-rate shift skipped: no committed batches with ratings yet")
    else:
        baseline = float(np.mean(history_rates))
        if abs(positive_rate - baseline) > config.max_positive_rate_shift:
            batch_reasons.append(
                f"anomaly:positive_rate_shift: {positive_rate:.3f} vs {baseline:.3f} in recent "
                f"batches (max shift {config.max_positive_rate_shift})"
            )
    return ScreeningReport(
        interaction_reasons, feedback_reasons, batch_reasons, notes, positive_rate
    )


def screen_batch(
    out_dir: Path,
    batch: int,
    guard: GuardScorer,
    fact_checker: FactChecker,
    config: ScreeningConfig | None = None,
    *,
    is_refusal: Callable[[str], bool] | None = None,
) -> ScreeningResult:
    """Screen a validated batch; quarantine suspicious rows; reject the batch if it fails.

    Idempotent: a batch already screened returns the stored result.

    Args:
        out_dir: the data folder.
        batch: a batch that passed :func:`loopwright.data.contracts.validate_batch`.
        guard: the safety classifier (``scores``).
        fact_checker: ``(prompt, response) -> FactVerdict``.
        config: thresholds (defaults: :class:`ScreeningConfig`).
        is_refusal: refusal detector (default: :func:`marker_refusal`).

    Returns:
        The verdict; when ``passed`` is False the batch is already rejected.

    Raises:
        BatchError: unknown batch, not yet validated, or rejected by validation.

    """
    config = config or ScreeningConfig()
    layout = DataLayout(Path(out_dir))
    manifest = load_manifest(layout)
    record = manifest.get(batch)
    if record.screening is not None:
        return ScreeningResult.from_json(record.screening)
    if record.state != "validated":
        raise BatchError(f"batch {batch} is {record.state!r}; screening needs a validated batch")

    interactions, feedback = read_staged(layout, batch)
    history = [h.stats.positive_rate for h in manifest.committed()[-config.rate_history :]]
    report = screen_frames(
        interactions,
        feedback,
        guard,
        fact_checker,
        config,
        history_rates=[r for r in history if r is not None],
        is_refusal=is_refusal,
    )
    bad_i, bad_f = report.interaction_reasons, report.feedback_reasons
    suspicious = [k for k, v in bad_f.items() if v != ["interaction_quarantined"]]
    fraction = len(suspicious) / len(feedback) if len(feedback) else 0.0
    reasons = list(report.batch_reasons)
    if fraction > config.max_suspicious_fraction:
        reasons.append(
            f"suspicious_fraction {fraction:.3f} > max_suspicious_fraction "
            f"{config.max_suspicious_fraction}"
        )
    passed = not reasons
    append_quarantine(
        layout,
        pd.concat(
            [
                rows_to_quarantine(interactions, bad_i, stage=STAGE, table="interactions"),
                rows_to_quarantine(feedback, bad_f, stage=STAGE, table="feedback"),
            ],
            ignore_index=True,
        ),
    )
    keep_i, keep_f = interactions.drop(index=list(bad_i)), feedback.drop(index=list(bad_f))
    write_staged(layout, batch, keep_i, keep_f)
    screened = len(interactions) + len(feedback)
    kept = len(keep_i) + len(keep_f)
    by_reason: Counter[str] = Counter(
        ":".join(r.split(":")[:2]) for why in (*bad_i.values(), *bad_f.values()) for r in why
    )
    result = ScreeningResult(
        passed=passed,
        suspicious_fraction=round(fraction, 6),
        reasons=reasons,
        counts={
            "interactions": len(interactions),
            "quarantined_interactions": len(bad_i),
            "feedback": len(feedback),
            "suspicious_feedback": len(suspicious),
            "accepted": kept if passed else 0,
            "quarantined": screened - kept if passed else screened,
        },
        by_reason=dict(by_reason),
        notes=report.notes,
        batch=batch,
    )
    manifest = load_manifest(layout)
    manifest.batches[batch].screening = result.to_json()
    if passed:
        manifest.batches[batch].state = "screened"
        save_manifest(layout, manifest)
        logger.info(
            "batch %d passed screening (%d of %d feedback suspicious)",
            batch,
            len(suspicious),
            len(feedback),
        )
    else:
        save_manifest(layout, manifest)
        reject_batch(layout.root, batch, reasons, stage=STAGE)
    return result
