"""Curate: committed rows -> SFT conversations, preference pairs, regression and gold cases.

Reads only the committed tables (rows that passed the contracts and the screening), so
nothing quarantined can reach training. Per interaction, its feedback is folded into one
judgement:

* **good**: a reviewer labelled it ``good``, or its user ratings sum above zero, and
  nobody contested it (no other reviewer label, no correction) and it is not an error
  fallback;
* **failed**: ratings sum below zero, a reviewer label other than ``good``, a correction,
  or the output rail blocked it.

Outputs (all deduplicated):

* SFT rows (``sft.jsonl``, one ``{"messages": [...]}`` per line as
  ``examples.helpdesk.records.write_conversations`` writes): good answers, corrections,
  reviewers' chosen answers, and uncontested guard blocks with their safe response.
* Preference pairs (``pairs.jsonl``): good vs failed answers to the same prompt
  (``rating``), correction vs the original (``correction``), reviewer comparisons
  (``reviewer``), and guard blocks: the safe fallback chosen over what the model would
  have said (``guard``; the gateway does not log a blocked generation, so the caller
  passes ``complete_blocked``, e.g. sampling the champion).
* Regression cases (``regression.jsonl``, :class:`~loopwright.records.EvalSample` rows of
  the ``regression`` suite): failures whose right behaviour is known (a correction, a
  reviewer's chosen answer, or a refusal for unsafe ones), merged with the existing suite
  and deduplicated by normalised prompt.
* Gold cases (``gold.jsonl``, EvalSample rows of the ``gold`` suite): interactions a
  reviewer marked gold (a ``gold`` feedback event from the review queue), with the
  reviewer's correction (or chosen answer, or the served answer they labelled ``good``) as
  the reference; merged and deduplicated like the regression cases. A gold item is a gold
  case, never also a regression case.
* Held-out reward pairs (``gold_pairs.jsonl``, source ``gold``): a gold item's correction
  chosen over the answer it served. They judge the reward model, so they are withheld from
  ``pairs.jsonl`` (its training pairs): a training pair equal to one of them is dropped
  and counted as ``pairs_withheld_gold``.

Counts add up: ``sft`` and ``pairs`` are the sums of their ``sft_*`` / ``pairs_*``
sources; ``heldout_pairs`` is ``heldout_pairs_gold``; every gold item is counted once as
``gold_new``, ``gold_duplicates`` or ``gold_without_target``, and ``gold`` is the size of
the whole gold suite (existing cases plus ``gold_new``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopwright.data.screening import marker_refusal
from loopwright.data.tables import FEEDBACK_SCHEMA, INTERACTION_SCHEMA, DataLayout, read_table
from loopwright.records import (
    EvalSample,
    ExpectedBehaviour,
    Interaction,
    Message,
    PreferencePair,
    read_jsonl,
    write_jsonl,
)

logger = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


class CurateConfig(BaseModel):
    """Weights and limits of curation.

    Attributes:
        rating_weight / correction_weight / reviewer_weight / guard_weight: loss weight of
            each pair source (>= 0).
        max_rating_pairs_per_prompt: cap on good x failed combinations per prompt.
        regression_suite: suite name of the regression cases.
        gold_suite: suite name of the gold cases (reviewer-verified references).
        guard_refusals_in_sft: add uncontested guard blocks to SFT as refusal examples.
        max_guard_sft_share: at most this share of the SFT rows are such guard refusals
            (default 5%; more teaches the candidate to answer benign questions with the
            fallback text). See docs/decisions/0003-nightly-fine-tune-recipe.md.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rating_weight: float = Field(default=1.0, ge=0.0)
    correction_weight: float = Field(default=1.0, ge=0.0)
    reviewer_weight: float = Field(default=1.0, ge=0.0)
    guard_weight: float = Field(default=1.0, ge=0.0)
    max_rating_pairs_per_prompt: int = Field(default=4, ge=1)
    regression_suite: str = Field(default="regression", min_length=1)
    gold_suite: str = Field(default="gold", min_length=1)
    guard_refusals_in_sft: bool = True
    max_guard_sft_share: float = Field(default=0.05, ge=0.0, lt=1.0)


@dataclass
class CuratedData:
    """Curated training signal (in memory).

    Attributes:
        sft: conversations, each ``[{"role", "content"}, ...]`` ending with the assistant.
        pairs: preference pairs.
        regression: the regression suite (existing cases first, then new ones).
        gold: the gold suite (existing cases first, then new ones).
        heldout_pairs: the reward model's held-out pairs from gold items (never in ``pairs``).
        counts: how many of each came from where (``sft_good``, ``pairs_rating``, ...).

    """

    sft: list[Conversation] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    regression: list[EvalSample] = field(default_factory=list)
    gold: list[EvalSample] = field(default_factory=list)
    heldout_pairs: list[PreferencePair] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CurateResult:
    """What :func:`curate` wrote.

    Attributes:
        sft_path / pairs_path / regression_path: the JSONL files.
        gold_path / gold_pairs_path: the gold suite and the held-out gold pairs (JSONL).
        counts: per output and source, e.g. ``sft``, ``sft_correction``, ``pairs``,
            ``pairs_guard``, ``regression``, ``regression_new``, ``gold``, ``gold_new``,
            ``heldout_pairs_gold``, ``guard_blocks_without_completion``,
            ``failures_without_target``.

    """

    sft_path: Path
    pairs_path: Path
    regression_path: Path
    counts: dict[str, int]
    gold_path: Path | None = None
    gold_pairs_path: Path | None = None


def normalise_prompt(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed: the dedupe key of prompts."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _dialogue(record: Interaction) -> Conversation:
    """The user/assistant turns of a request (the system prompt is the gateway's, not data)."""
    return [{"role": m.role, "content": m.content} for m in record.messages if m.role != "system"]


@dataclass
class _Judged:
    record: Interaction
    ratings: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    corrections: list[tuple[str, str]] = field(default_factory=list)  # (source, text)
    preferences: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (source, chosen, rejected)
    gold: bool = False  # a reviewer marked it gold

    @property
    def prompt(self) -> str:
        for m in reversed(self.record.messages):
            if m.role == "user":
                return m.content
        return ""

    @property
    def contested(self) -> bool:
        return bool(self.corrections) or any(label != "good" for label in self.labels)

    @property
    def good(self) -> bool:
        if self.contested or self.record.error is not None or not self.record.response:
            return False
        return "good" in self.labels or sum(self.ratings) > 0

    @property
    def failed(self) -> bool:
        return (
            sum(self.ratings) < 0 or self.contested or self.record.output_verdict.action == "block"
        )

    @property
    def blocked(self) -> bool:
        return self.record.fallback_used and "block" in (
            self.record.input_verdict.action,
            self.record.output_verdict.action,
        )


def _judge(interactions: pd.DataFrame, feedback: pd.DataFrame) -> list[_Judged]:
    judged = {
        row["id"]: _Judged(Interaction.model_validate_json(row["record"]))
        for _, row in interactions.sort_values(["timestamp", "id"]).iterrows()
    }
    for _, row in feedback.sort_values(["timestamp", "id"]).iterrows():
        item = judged.get(row["interaction_id"])
        if item is None:
            continue  # its interaction is in another batch selection
        kind = row["kind"]
        if kind == "rating" and pd.notna(row["rating"]):
            item.ratings.append(float(row["rating"]))
        elif kind == "reviewer_label" and isinstance(row["label"], str):
            item.labels.append(row["label"])
        elif kind == "correction" and isinstance(row["text"], str) and row["text"].strip():
            item.corrections.append((row["source"], row["text"]))
        elif (
            kind == "preference"
            and isinstance(row["chosen"], str)
            and isinstance(row["rejected"], str)
        ):
            item.preferences.append((row["source"], row["chosen"], row["rejected"]))
        elif kind == "gold" and row["source"] == "reviewer" and row["value_json"] == "true":
            item.gold = True
    return list(judged.values())


def _best_correction(item: _Judged) -> str | None:
    reviewer = [t for s, t in item.corrections if s == "reviewer"]
    texts = reviewer or [t for _, t in item.corrections]
    return texts[-1] if texts else None  # the latest, reviewers first


def _reviewer_correction(item: _Judged) -> str | None:
    reviewer = [t for s, t in item.corrections if s == "reviewer"]
    return reviewer[-1] if reviewer else None


def _case_id(prompt: str) -> str:
    return hashlib.sha1(normalise_prompt(prompt).encode("utf-8")).hexdigest()[:12]


def build_training_data(
    interactions: pd.DataFrame,
    feedback: pd.DataFrame,
    config: CurateConfig | None = None,
    *,
    is_refusal: Callable[[str], bool] | None = None,
    complete_blocked: Callable[[list[str]], list[str]] | None = None,
    existing_regression: Sequence[EvalSample] = (),
    guard_refusal: str | None = None,
    existing_gold: Sequence[EvalSample] = (),
) -> CuratedData:
    """Curate SFT rows, pairs, regression and gold cases from committed frames (pure).

    Args:
        interactions: committed interactions (schema of :mod:`loopwright.data.tables`).
        feedback: committed feedback on them.
        config: weights and limits.
        is_refusal: refusal detector (guard pairs whose completion is itself a refusal
            are dropped; regression cases whose target is a refusal expect ``refuse``).
        complete_blocked: prompts -> what the model would say, for guard-block pairs.
        existing_regression: the current regression suite (kept; new prompts only added).
        guard_refusal: what the policy should say to a guard-blocked prompt (the domain's
            refusal); None keeps the logged response (the gateway's fallback text).
        existing_gold: the current gold suite (kept; new prompts only added).

    """
    config = config or CurateConfig()
    is_refusal = is_refusal or marker_refusal()
    judged = _judge(interactions, feedback)
    out = CuratedData()
    counts: Counter[str] = Counter()

    # Gold first: its held-out pairs decide which pairs training may not see.
    out.heldout_pairs = _gold_pairs(judged, counts)
    heldout_keys = {_pair_key(p.prompt, p.chosen, p.rejected) for p in out.heldout_pairs}

    sft_seen: set[tuple[str, str]] = set()

    def add_sft(item: _Judged, answer: str, source: str) -> None:
        key = (normalise_prompt(item.prompt), " ".join(answer.split()))
        if key in sft_seen or not answer.strip():
            return
        sft_seen.add(key)
        out.sft.append([*_dialogue(item.record), {"role": "assistant", "content": answer}])
        counts[f"sft_{source}"] += 1

    pair_seen: set[tuple[str, str, str]] = set()

    def add_pair(prompt: str, chosen: str, rejected: str, source: str, weight: float) -> None:
        key = _pair_key(prompt, chosen, rejected)
        if key in pair_seen or key[1] == key[2] or not key[1] or not key[2]:
            return
        if key in heldout_keys:
            # A reward model trained on its own yardstick would grade itself.
            pair_seen.add(key)
            counts["pairs_withheld_gold"] += 1
            return
        pair_seen.add(key)
        out.pairs.append(
            PreferencePair(
                prompt=prompt, chosen=chosen, rejected=rejected, source=source, weight=weight
            )
        )
        counts[f"pairs_{source}"] += 1

    blocked_prompts: list[_Judged] = []
    guard_sft: list[tuple[_Judged, str]] = []
    by_prompt: dict[str, list[_Judged]] = defaultdict(list)
    for item in judged:
        response = item.record.response or ""
        if item.blocked:
            # A block nobody contested: the safe response is what the model should say.
            if not item.contested and sum(item.ratings) >= 0 and item.record.error is None:
                blocked_prompts.append(item)
                if config.guard_refusals_in_sft:
                    guard_sft.append((item, guard_refusal or response))
        elif item.good:
            add_sft(item, response, "good")
        correction = _best_correction(item)
        if correction is not None:
            add_sft(item, correction, "correction")
            if response:
                add_pair(item.prompt, correction, response, "correction", config.correction_weight)
        for source, chosen, rejected in item.preferences:
            if source == "reviewer":
                add_sft(item, chosen, "reviewer")
            add_pair(
                item.prompt,
                chosen,
                rejected,
                "reviewer" if source == "reviewer" else "user_preference",
                config.reviewer_weight,
            )
        by_prompt[normalise_prompt(item.prompt)].append(item)

    _add_capped_guard_sft(guard_sft, len(out.sft), config.max_guard_sft_share, add_sft, counts)

    for items in by_prompt.values():
        goods = [i.record.response for i in items if i.good and not i.blocked and i.record.response]
        bads = [
            i.record.response
            for i in items
            if sum(i.ratings) < 0 and i.record.response and not i.blocked
        ]
        made = 0
        for chosen in dict.fromkeys(goods):
            for rejected in dict.fromkeys(bads):
                if made >= config.max_rating_pairs_per_prompt:
                    break
                before = len(out.pairs)
                add_pair(items[0].prompt, chosen, rejected, "rating", config.rating_weight)
                made += len(out.pairs) - before

    if blocked_prompts and complete_blocked is not None:
        completions = complete_blocked([i.prompt for i in blocked_prompts])
        if len(completions) != len(blocked_prompts):
            raise ValueError(
                f"complete_blocked returned {len(completions)} texts for "
                f"{len(blocked_prompts)} prompts"
            )
        for item, completion in zip(blocked_prompts, completions, strict=True):
            if not completion or is_refusal(completion):
                counts["guard_completion_refused"] += 1  # no contrast to learn from
                continue
            add_pair(
                item.prompt,
                guard_refusal or item.record.response or "",
                completion,
                "guard",
                config.guard_weight,
            )
    else:
        counts["guard_blocks_without_completion"] += len(blocked_prompts)

    out.regression = list(existing_regression)
    known = {normalise_prompt(_last_user(s.messages)) for s in existing_regression}
    for item in judged:
        if not item.failed:
            continue
        if item.gold:
            counts["regression_skipped_gold"] += 1  # judged in the gold suite instead
            continue
        case = _regression_case(item, config, is_refusal)
        if case is None:
            counts["failures_without_target"] += 1
            continue
        key = normalise_prompt(item.prompt)
        if key in known:
            counts["regression_duplicates"] += 1
            continue
        known.add(key)
        out.regression.append(case)
        counts["regression_new"] += 1

    out.gold = _gold_suite(judged, config, is_refusal, existing_gold, counts)

    counts["sft"] = len(out.sft)
    counts["pairs"] = len(out.pairs)
    counts["regression"] = len(out.regression)
    counts["gold"] = len(out.gold)
    counts["heldout_pairs"] = len(out.heldout_pairs)
    out.counts = dict(sorted(counts.items()))
    return out


def _pair_key(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str]:
    """Dedupe key of a preference pair (normalised prompt, whitespace-collapsed answers)."""
    return normalise_prompt(prompt), " ".join(chosen.split()), " ".join(rejected.split())


def _gold_target(item: _Judged, is_refusal: Callable[[str], bool]) -> tuple[str, str] | None:
    """The reference a gold item is judged by and where it came from, or None if unknown.

    The reviewer's own words first (correction, then chosen answer); else the served answer
    when the reviewer labelled it ``good`` and nobody contested it; else, for an unsafe
    request the gateway blocked, the safe response it served. A user's correction is never
    a gold reference: the reviewer did not write it.
    """
    correction = _reviewer_correction(item)
    if correction is not None:
        return correction, "correction"
    chosen = [c for s, c, _ in item.preferences if s == "reviewer"]
    if chosen:
        return chosen[-1], "reviewer"
    response = item.record.response or ""
    if "good" in item.labels and not item.contested and item.record.error is None and response:
        return response, "served"
    if "unsafe" in item.labels and item.record.fallback_used and is_refusal(response):
        return response, "fallback"
    return None


def _gold_pairs(judged: Sequence[_Judged], counts: Counter[str]) -> list[PreferencePair]:
    """Held-out reward pairs: each gold item's correction chosen over what it served."""
    pairs: list[PreferencePair] = []
    seen: set[tuple[str, str, str]] = set()
    for item in judged:
        if not item.gold:
            continue
        correction = _reviewer_correction(item)
        response = item.record.response or ""
        if correction is None:
            continue  # nothing to contrast the served answer with
        key = _pair_key(item.prompt, correction, response)
        if key in seen or key[1] == key[2] or not key[2]:
            continue
        seen.add(key)
        pairs.append(
            PreferencePair(prompt=item.prompt, chosen=correction, rejected=response, source="gold")
        )
        counts["heldout_pairs_gold"] += 1
    return pairs


def _gold_suite(
    judged: Sequence[_Judged],
    config: CurateConfig,
    is_refusal: Callable[[str], bool],
    existing: Sequence[EvalSample],
    counts: Counter[str],
) -> list[EvalSample]:
    """The gold suite: ``existing`` cases, then each new gold prompt's case."""
    suite = list(existing)
    known = {normalise_prompt(_last_user(s.messages)) for s in existing}
    for item in judged:
        if not item.gold:
            continue
        found = _gold_target(item, is_refusal)
        if found is None:
            counts["gold_without_target"] += 1
            continue
        key = normalise_prompt(item.prompt)
        if key in known:
            counts["gold_duplicates"] += 1
            continue
        known.add(key)
        target, reference = found
        case_id = _case_id(item.prompt)
        suite.append(
            EvalSample(
                id=f"{config.gold_suite}-{case_id}",
                suite=config.gold_suite,
                # Its own dimension: the gate takes one suite's primary metric per
                # dimension, so sharing "regression" would hide one of the two suites.
                dimension="gold",
                messages=[
                    Message(role=m["role"], content=m["content"])  # type: ignore[arg-type]
                    for m in _dialogue(item.record)
                ],
                references=[target],
                group=case_id,
                expected_behaviour="refuse" if is_refusal(target) else "answer",
                tags={
                    "source": "gold",
                    "reference": reference,
                    "label": next((lab for lab in item.labels if lab != "good"), "good"),
                    "interaction_id": item.record.id,
                },
            )
        )
        counts["gold_new"] += 1
    return suite


def _add_capped_guard_sft(
    candidates: list[tuple[_Judged, str]],
    other_rows: int,
    share: float,
    add_sft: Callable[[_Judged, str, str], None],
    counts: Counter[str],
) -> None:
    """Add guard refusals to SFT so that they are at most ``share`` of all SFT rows.

    Which ones is decided by a hash of the prompt, so the choice is the same on every
    re-curation of the same tables (curation rewrites its outputs from all committed rows).
    """
    limit = int(share * other_rows / (1 - share))
    ranked = sorted(candidates, key=lambda c: _case_id(c[0].prompt))
    for item, response in ranked[:limit]:
        add_sft(item, response, "guard")
    if len(ranked) > limit:
        counts["sft_guard_capped"] += len(ranked) - limit


def _last_user(messages: Iterable[Message]) -> str:
    last = ""
    for m in messages:
        if m.role == "user":
            last = m.content
    return last


def _regression_case(
    item: _Judged, config: CurateConfig, is_refusal: Callable[[str], bool]
) -> EvalSample | None:
    """The eval case a failure becomes, or None when the right behaviour is unknown."""
    target = _best_correction(item)
    source = "correction"
    if target is None:
        reviewer = [c for s, c, _ in item.preferences if s == "reviewer"]
        target, source = (reviewer[-1], "reviewer") if reviewer else (None, "")
    unsafe = "unsafe" in item.labels or item.record.output_verdict.action == "block"
    if target is None and unsafe and item.record.fallback_used and item.record.response:
        target, source = (
            item.record.response,
            "output_block" if "unsafe" not in item.labels else "reviewer",
        )
    if target is None:
        return None
    behaviour: ExpectedBehaviour = "refuse" if is_refusal(target) else "answer"
    label = next(
        (lab for lab in item.labels if lab != "good"),
        "negative_rating" if sum(item.ratings) < 0 else source,
    )
    case_id = _case_id(item.prompt)
    return EvalSample(
        id=f"{config.regression_suite}-{case_id}",
        suite=config.regression_suite,
        dimension="regression",
        messages=[Message(role=m["role"], content=m["content"]) for m in _dialogue(item.record)],  # type: ignore[arg-type]
        references=[target],
        group=case_id,
        expected_behaviour=behaviour,
        tags={"source": source, "failure": label, "interaction_id": item.record.id},
    )


def _write_conversations(path: Path, conversations: Iterable[Conversation]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as handle:
        for conv in conversations:
            handle.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
            n += 1
    return n


def curate(
    out_dir: Path,
    dest_dir: Path,
    config: CurateConfig | None = None,
    *,
    batches: Sequence[int] | None = None,
    is_refusal: Callable[[str], bool] | None = None,
    complete_blocked: Callable[[list[str]], list[str]] | None = None,
    existing_regression: Path | None = None,
    guard_refusal: str | None = None,
    existing_gold: Path | None = None,
) -> CurateResult:
    """Curate the committed tables of a data folder into JSONL training files.

    Args:
        out_dir: the data folder (committed ``interactions.parquet`` / ``feedback.parquet``).
        dest_dir: where ``sft.jsonl``, ``pairs.jsonl``, ``regression.jsonl``, ``gold.jsonl``
            and ``gold_pairs.jsonl`` go.
        config: weights and limits.
        batches: only rows of these committed batches (None: all committed rows).
        is_refusal: refusal detector (default: :func:`loopwright.data.screening.marker_refusal`).
        complete_blocked: prompts -> what the model would have said (guard-block pairs).
        existing_regression: the current regression suite JSONL; kept, and its prompts
            are not added again.
        guard_refusal: the SFT target (and preferred side) for guard-blocked prompts; see
            :func:`build_training_data`.
        existing_gold: the current gold suite JSONL; kept, and its prompts are not added
            again.

    """
    layout = DataLayout(Path(out_dir))
    interactions = read_table(layout.interactions, INTERACTION_SCHEMA)
    feedback = read_table(layout.feedback, FEEDBACK_SCHEMA)
    if batches is not None:
        interactions = interactions[interactions["batch"].isin(list(batches))]
        feedback = feedback[feedback["interaction_id"].isin(interactions["id"])]
    existing = list(read_jsonl(existing_regression, EvalSample)) if existing_regression else []
    gold = list(read_jsonl(existing_gold, EvalSample)) if existing_gold else []
    data = build_training_data(
        interactions,
        feedback,
        config,
        is_refusal=is_refusal,
        complete_blocked=complete_blocked,
        existing_regression=existing,
        guard_refusal=guard_refusal,
        existing_gold=gold,
    )
    dest = Path(dest_dir)
    result = CurateResult(
        sft_path=dest / "sft.jsonl",
        pairs_path=dest / "pairs.jsonl",
        regression_path=dest / "regression.jsonl",
        counts=data.counts,
        gold_path=dest / "gold.jsonl",
        gold_pairs_path=dest / "gold_pairs.jsonl",
    )
    _write_conversations(result.sft_path, data.sft)
    write_jsonl(result.pairs_path, data.pairs)
    write_jsonl(result.regression_path, data.regression)
    write_jsonl(dest / "gold.jsonl", data.gold)
    write_jsonl(dest / "gold_pairs.jsonl", data.heldout_pairs)
    logger.info("curated %s into %s", data.counts, dest)
    return result


def load_pairs(path: Path) -> list[PreferencePair]:
    """Read ``pairs.jsonl`` back (a bad line raises naming file and line)."""
    return list(read_jsonl(path, PreferencePair))


def load_sft(path: Path) -> list[Conversation]:
    """Read ``sft.jsonl`` back as conversations."""
    rows: list[Conversation] = []
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            data: Any = json.loads(line)
            if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
                raise ValueError(f'{path}:{lineno}: expected {{"messages": [...]}}')
            rows.append(data["messages"])
    return rows
