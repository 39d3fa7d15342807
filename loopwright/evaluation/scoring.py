"""Apply a suite's scorers to generations: per-sample results, errors kept apart.

Pure given its inputs (scorers may call injected models or a judge endpoint). A sample
whose generation failed gets no scores and keeps its error; a scorer that raises on a
batch is retried per sample and a sample it still fails on gets a scoring error for
that metric only. Neither is ever turned into a zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopwright.evaluation.scorers import NOT_APPLICABLE, BuiltScorer, GroupItem, Score
from loopwright.evaluation.store import Generation
from loopwright.evaluation.suites import Suite
from loopwright.records import EvalSample, ExpectedBehaviour

logger = logging.getLogger(__name__)

SCORE_CHUNK = 64


class SampleResult(BaseModel):
    """One row of the per-sample table: a sample's response and its scores.

    Attributes:
        scores: metric -> value in [0, 1]; ``None`` when not applicable to this sample.
        score_errors: metric -> error text for scorers that failed on this sample.
        error: generation error; when set, ``scores`` is empty.
        baseline_response: the baseline model's reply, for pairwise metrics.

    """

    model_config = ConfigDict(extra="forbid")

    suite: str
    dimension: str
    sample_id: str
    repeat: int = 0
    model_id: str
    prompt: str
    response: str | None = None
    error: str | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    score_errors: dict[str, str] = Field(default_factory=dict)
    details: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    group: str | None = None
    expected_behaviour: ExpectedBehaviour = "answer"
    references: list[str] = Field(default_factory=list)
    baseline_response: str | None = None


def _last_user(sample: EvalSample) -> str:
    users = [m.content for m in sample.messages if m.role == "user"]
    return users[-1] if users else ""


def _apply(row: SampleResult, metric: str, score: Score) -> None:
    if score.error is not None:
        row.score_errors[metric] = score.error
        row.scores.pop(metric, None)
        return
    row.scores[metric] = score.value
    meta = dict(score.metadata)
    if meta and NOT_APPLICABLE not in meta:
        row.details[metric] = {k: v for k, v in meta.items() if _jsonable(v)}
    elif meta:
        row.details[metric] = {NOT_APPLICABLE: meta[NOT_APPLICABLE]}


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _run_sample_scorer(
    scorer: BuiltScorer,
    items: list[tuple[SampleResult, EvalSample]],
    baselines: list[str] | None,
) -> None:
    """Score rows in chunks with the batched form if present; isolate failures."""
    fn = scorer.fn
    pairwise = scorer.info.kind == "pairwise"
    for start in range(0, len(items), SCORE_CHUNK):
        chunk = items[start : start + SCORE_CHUNK]
        samples = [s for _, s in chunk]
        responses = [r.response or "" for r, _ in chunk]
        base = baselines[start : start + SCORE_CHUNK] if baselines is not None else None
        scores: Sequence[Score] | None = None
        batch = getattr(fn, "score_batch", None)
        if batch is not None:
            try:
                scores = batch(samples, responses, base) if pairwise else batch(samples, responses)
            except Exception as exc:  # noqa: BLE001 - retried per sample below
                logger.warning("%s: batch scoring failed (%s); per sample", scorer.metric, exc)
        if scores is None:
            out: list[Score] = []
            for i, (sample, response) in enumerate(zip(samples, responses, strict=True)):
                try:
                    out.append(
                        fn(sample, response, base[i]) if pairwise and base else fn(sample, response)
                    )
                except Exception as exc:  # noqa: BLE001 - a scoring error, counted
                    out.append(Score(None, error=f"{type(exc).__name__}: {exc}"[:300]))
            scores = out
        for (row, _), score in zip(chunk, scores, strict=True):
            _apply(row, scorer.metric, score)


def score_suite(
    suite: Suite,
    samples: Sequence[EvalSample],
    generations: Mapping[tuple[str, int], Generation],
    *,
    model_id: str,
    baseline: Mapping[tuple[str, int], Generation] | None = None,
) -> list[SampleResult]:
    """Score every (sample, repeat) of a suite.

    Args:
        suite: the loaded suite with its configured scorers.
        samples: the suite's samples.
        generations: (sample id, repeat) -> generation of the evaluated model.
        model_id: identity of the evaluated model, copied into rows.
        baseline: the baseline model's generations on the same keys, for pairwise
            scorers; without it pairwise metrics are not applicable.

    Returns:
        One row per (sample, repeat), in sample order.

    """
    rows: list[tuple[SampleResult, EvalSample]] = []
    for sample in samples:
        for repeat in range(suite.spec.repeats):
            gen = generations[(sample.id, repeat)]
            base = baseline.get((sample.id, repeat)) if baseline is not None else None
            row = SampleResult(
                suite=suite.name,
                dimension=suite.dimension,
                sample_id=sample.id,
                repeat=repeat,
                model_id=model_id,
                prompt=_last_user(sample),
                response=gen.response,
                error=gen.error,
                tags=dict(sample.tags),
                group=sample.group,
                expected_behaviour=sample.expected_behaviour,
                references=list(sample.references),
                baseline_response=base.response if base is not None else None,
            )
            rows.append((row, sample))
    ok = [(r, s) for r, s in rows if r.error is None]
    for scorer in suite.scorers:
        kind = scorer.info.kind
        if kind == "group":
            continue
        if kind == "pairwise":
            with_base = [(r, s) for r, s in ok if r.baseline_response is not None]
            for r, _ in ok:
                if r.baseline_response is None:
                    _apply(
                        r,
                        scorer.metric,
                        Score(
                            None,
                            metadata={
                                NOT_APPLICABLE: "no baseline response (no baseline, or it errored)"
                            },
                        ),
                    )
            _run_sample_scorer(scorer, with_base, [r.baseline_response or "" for r, _ in with_base])
        else:
            _run_sample_scorer(scorer, ok, None)
    for scorer in suite.scorers:
        if scorer.info.kind != "group":
            continue
        items = [GroupItem(s, r.response or "", r.repeat, dict(r.scores)) for r, s in ok]
        try:
            group_scores = scorer.fn(items)
        except Exception as exc:  # noqa: BLE001 - the whole metric failed; every row says so
            group_scores = [Score(None, error=f"{type(exc).__name__}: {exc}"[:300])] * len(ok)
        for (row, _), score in zip(ok, group_scores, strict=True):
            _apply(row, scorer.metric, score)
    return [r for r, _ in rows]
