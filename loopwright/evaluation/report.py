"""Aggregate per-sample results into metrics with bootstrap CIs, and compare two models.

Units: a metric is the mean over samples of a per-sample value in [0, 1]; a sample with
several repeats contributes the mean of its repeats (so the bootstrap resamples
independent prompts, not correlated repeats). Samples whose generation failed are
excluded and counted as ``errors``; samples a scorer failed on are counted as
``score_errors``; samples a scorer does not apply to are counted as ``not_applicable``.
So for every metric and slice: ``n + errors + score_errors + not_applicable`` = samples
in the slice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loopwright.evaluation.scoring import SampleResult
from loopwright.evaluation.stats import (
    DEFAULT_RESAMPLES,
    bootstrap_mean,
    paired_bootstrap,
    win_rate,
)
from loopwright.evaluation.suites import Suite
from loopwright.records import EvalReport, MetricValue

ALL = "all"
MISSING_TAG = "missing"
_SLICE_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class MetricSummary:
    """One metric on one slice of one suite.

    Attributes:
        slice: ``all`` or ``<tag>=<value>``.
        value: mean per-sample value (NaN when ``n`` is 0).
        ci_low, ci_high: 95% percentile-bootstrap interval of the mean.
        n: samples with a value.
        errors: samples whose generation failed (all repeats).
        score_errors: samples the scorer failed on.
        not_applicable: samples the scorer does not apply to.
        direction: ``higher`` or ``lower`` is better.
        primary: whether this is the suite's primary metric.

    """

    suite: str
    dimension: str
    metric: str
    slice: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    errors: int
    score_errors: int
    not_applicable: int
    direction: str
    primary: bool


@dataclass(frozen=True)
class PairedMetric:
    """Candidate versus baseline on the samples both have a value for.

    Attributes:
        delta: mean(candidate - baseline); its sign is raw, read it with ``direction``.
        ci_low, ci_high: paired bootstrap interval of ``delta``.
        win_rate: share of samples where the candidate is better (ties count half).
        worst: the most regressed samples, worst first.

    """

    suite: str
    dimension: str
    metric: str
    slice: str
    direction: str
    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float
    n: int
    win_rate: float
    worst: list[dict[str, Any]] = field(default_factory=list)


def _seed(seed: int, *parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return (int.from_bytes(digest[:4], "little") + seed) % (2**32)


def slice_name(key: str, value: str) -> str:
    """``<tag>.<value>`` with anything but letters, digits, ``_ - .`` replaced by ``_``.

    The restricted alphabet keeps slice names valid in report keys (``<dimension>/<slice>``)
    and MLflow metric names.
    """
    return _SLICE_BAD.sub("_", f"{key}.{value}")


def _slices(suite: Suite, rows: Sequence[SampleResult]) -> dict[str, list[SampleResult]]:
    out: dict[str, list[SampleResult]] = {ALL: list(rows)}
    for key in suite.spec.slices:
        groups: dict[str, list[SampleResult]] = defaultdict(list)
        for r in rows:
            groups[slice_name(key, r.tags.get(key, MISSING_TAG))].append(r)
        for name in sorted(groups):
            out[name] = groups[name]
    return out


@dataclass
class _SampleTally:
    values: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    score_errors: int = 0
    not_applicable: int = 0


def per_sample_values(rows: Sequence[SampleResult], metric: str) -> _SampleTally:
    """Per-sample values of ``metric`` (mean over repeats) and the exclusion counts."""
    by_sample: dict[str, list[SampleResult]] = defaultdict(list)
    for r in rows:
        by_sample[r.sample_id].append(r)
    tally = _SampleTally()
    for sid, reps in by_sample.items():
        ok = [r for r in reps if r.error is None]
        if not ok:
            tally.errors += 1
            continue
        vals = [r.scores[metric] for r in ok if r.scores.get(metric) is not None]
        if vals:
            tally.values[sid] = sum(v for v in vals if v is not None) / len(vals)
        elif any(metric in r.score_errors for r in ok):
            tally.score_errors += 1
        else:
            tally.not_applicable += 1
    return tally


def aggregate(
    suites: Sequence[Suite],
    rows_by_suite: Mapping[str, Sequence[SampleResult]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[MetricSummary]:
    """Every metric of every suite on every slice, with its CI and counts."""
    out: list[MetricSummary] = []
    for suite in suites:
        rows = rows_by_suite.get(suite.name, [])
        for slice_name, slice_rows in _slices(suite, rows).items():
            for scorer in suite.scorers:
                tally = per_sample_values(slice_rows, scorer.metric)
                interval = bootstrap_mean(
                    list(tally.values.values()),
                    resamples=resamples,
                    seed=_seed(seed, suite.name, scorer.metric, slice_name),
                )
                out.append(
                    MetricSummary(
                        suite=suite.name,
                        dimension=suite.dimension,
                        metric=scorer.metric,
                        slice=slice_name,
                        value=interval.value,
                        ci_low=interval.low,
                        ci_high=interval.high,
                        n=interval.n,
                        errors=tally.errors,
                        score_errors=tally.score_errors,
                        not_applicable=tally.not_applicable,
                        direction=scorer.direction,
                        primary=scorer.metric == suite.primary,
                    )
                )
    return out


def to_eval_report(
    model_uri: str,
    suites: Sequence[Suite],
    metrics: Sequence[MetricSummary],
    errors: int,
) -> EvalReport:
    """Build the ``EvalReport`` record: ``<dimension>/<slice>`` -> metrics with n > 0.

    Within each slice the primary metrics come first (the gate takes the first metric of
    a slice when its policy names none).
    """
    slices: dict[str, list[MetricValue]] = defaultdict(list)
    for m in sorted(metrics, key=lambda m: not m.primary):
        if m.n == 0:
            continue  # NaN has no place in the record; the summary keeps n=0 entries
        slices[f"{m.dimension}/{m.slice}"].append(
            MetricValue(metric=m.metric, value=m.value, ci_low=m.ci_low, ci_high=m.ci_high, n=m.n)
        )
    return EvalReport(
        model_uri=model_uri,
        suites=[s.name for s in suites],
        slices=dict(slices),
        errors=errors,
    )


def compare(
    suites: Sequence[Suite],
    candidate: Mapping[str, Sequence[SampleResult]],
    baseline: Mapping[str, Sequence[SampleResult]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    worst_k: int = 5,
) -> list[PairedMetric]:
    """Paired comparison per suite, metric and slice on the samples both models scored.

    Pairwise metrics (already relative to the baseline, e.g. ``reward_win_rate``) are
    skipped.
    """
    out: list[PairedMetric] = []
    for suite in suites:
        cand_rows = candidate.get(suite.name, [])
        base_by_id: dict[str, list[SampleResult]] = defaultdict(list)
        for r in baseline.get(suite.name, []):
            base_by_id[r.sample_id].append(r)
        cand_first = {r.sample_id: r for r in cand_rows if r.repeat == 0}
        for slice_name, slice_rows in _slices(suite, cand_rows).items():
            ids = {r.sample_id for r in slice_rows}
            base_rows = [r for sid in ids for r in base_by_id.get(sid, [])]
            for scorer in suite.scorers:
                if scorer.info.kind == "pairwise":
                    continue
                cvals = per_sample_values(slice_rows, scorer.metric).values
                bvals = per_sample_values(base_rows, scorer.metric).values
                common = sorted(set(cvals) & set(bvals))
                c = [cvals[s] for s in common]
                b = [bvals[s] for s in common]
                interval = paired_bootstrap(
                    c,
                    b,
                    resamples=resamples,
                    seed=_seed(seed, "paired", suite.name, scorer.metric, slice_name),
                )
                sign = 1.0 if scorer.direction == "higher" else -1.0
                better = win_rate([sign * x for x in c], [sign * x for x in b])
                regress = sorted(
                    ((sign * (bvals[s] - cvals[s]), s) for s in common),
                    key=lambda t: (-t[0], t[1]),
                )
                worst = []
                for amount, sid in regress[:worst_k]:
                    if amount <= 0:
                        break
                    row = cand_first.get(sid)
                    base_row = next((r for r in base_by_id[sid] if r.repeat == 0), None)
                    worst.append(
                        {
                            "sample_id": sid,
                            "prompt": row.prompt if row else "",
                            "candidate_response": row.response if row else None,
                            "baseline_response": base_row.response if base_row else None,
                            "candidate": cvals[sid],
                            "baseline": bvals[sid],
                        }
                    )
                out.append(
                    PairedMetric(
                        suite=suite.name,
                        dimension=suite.dimension,
                        metric=scorer.metric,
                        slice=slice_name,
                        direction=scorer.direction,
                        candidate=_mean(c),
                        baseline=_mean(b),
                        delta=interval.value,
                        ci_low=interval.low,
                        ci_high=interval.high,
                        n=interval.n,
                        win_rate=better,
                        worst=worst,
                    )
                )
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def build_summary(
    *,
    model: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    suites: Sequence[Suite],
    metrics: Sequence[MetricSummary],
    baseline_metrics: Sequence[MetricSummary] | None,
    comparison: Sequence[PairedMetric] | None,
    counts: Mapping[str, Any],
    decoding: Mapping[str, Any],
) -> dict[str, Any]:
    """Build the JSON summary of an evaluation (what a gate or a person reads).

    Layout::

        dimensions.<dim>.<metric>.{suite, direction, primary, slices.<slice>.{value,
            ci_low, ci_high, n, errors, score_errors, not_applicable}}
        baseline_dimensions: same, for the baseline (null without one)
        comparison.<dim>.<metric>.<slice>.{delta, ci_low, ci_high, n, win_rate,
            candidate, baseline, direction, worst[]}  (null without a baseline)
        counts: samples, generations, cached, generated, generation_errors, score_errors

    Every value is higher- or lower-is-better as its ``direction`` says; NaN is null.
    """

    def dims(ms: Sequence[MetricSummary]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in ms:
            entry = out.setdefault(m.dimension, {}).setdefault(
                m.metric,
                {"suite": m.suite, "direction": m.direction, "primary": m.primary, "slices": {}},
            )
            entry["slices"][m.slice] = {
                "value": m.value,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "n": m.n,
                "errors": m.errors,
                "score_errors": m.score_errors,
                "not_applicable": m.not_applicable,
            }
        return out

    comp: dict[str, Any] | None = None
    if comparison is not None:
        comp = {}
        for p in comparison:
            d = asdict(p)
            for k in ("suite", "dimension", "metric", "slice"):
                d.pop(k)
            comp.setdefault(p.dimension, {}).setdefault(p.metric, {})[p.slice] = d
    return _clean(
        {
            "schema_version": 1,
            "model": dict(model),
            "baseline": dict(baseline) if baseline is not None else None,
            "decoding": dict(decoding),
            "suites": {
                s.name: {
                    "dimension": s.dimension,
                    "file": str(s.path),
                    "samples_file": str(s.sample_path),
                    "primary": s.primary,
                    "repeats": s.spec.repeats,
                }
                for s in suites
            },
            "counts": dict(counts),
            "dimensions": dims(metrics),
            "baseline_dimensions": dims(baseline_metrics) if baseline_metrics is not None else None,
            "comparison": comp,
        }
    )
