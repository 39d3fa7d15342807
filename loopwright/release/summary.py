"""The evaluation summary the offline gate reads (issue 4 produces it, issue 7 consumes it).

Shape (JSON)::

    {"schema_version": 1, "model_uri": "models:/app-policy/7",
     "baseline_uri": "models:/app-policy/6",            # null: no paired comparison
     "errors": 0, "eval_run_id": "<mlflow run id>",
     "views": {
       "raw":     {"values": {"correctness": {"metric": "exact_match", "value": 0.71,
                                              "ci_low": 0.66, "ci_high": 0.76, "n": 300},
                              "robustness/injection": {...}},
                   "paired": {"correctness": {"metric": "exact_match", "delta": 0.03,
                                              "ci_low": 0.01, "ci_high": 0.05, "n": 300,
                                              "win_rate": 0.08}},
                   "noise":  {"correctness": 0.006}},
       "gateway": {...same shape, the candidate judged through the gateway's controls...}}}

Keys are ``"<dimension>"`` for a whole dimension and ``"<dimension>/<slice>"`` for a slice;
``loopwright.records.EvalReport`` writes ``"<dimension>/all"`` for the former, and
:func:`summary_from_reports` maps it. ``delta`` is candidate minus baseline in the metric's
own units (the gate's policy says which direction is better). ``noise`` is the run-to-run
standard deviation of the metric when the same model is evaluated again, same units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loopwright.records import SUPPORTED_SCHEMA_VERSIONS, EvalReport, MetricValue, utcnow
from loopwright.release.strict import ConfigError, StrictModel, check_dimension_key, parse_model

View = Literal["raw", "gateway"]
VIEWS: tuple[str, ...] = ("raw", "gateway")


class DimensionStat(StrictModel):
    """One metric on one dimension (or slice): point value, 95% CI, sample count."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> DimensionStat:
        if self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low} > ci_high {self.ci_high}")
        return self


class PairedStat(StrictModel):
    """Candidate minus baseline on the same samples, with a paired bootstrap 95% CI.

    Attributes:
        win_rate: fraction of paired samples where the candidate scored better, in [0, 1].

    """

    metric: str = ""
    delta: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=0)
    win_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> PairedStat:
        if self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low} > ci_high {self.ci_high}")
        return self


def _check_keys(value: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in value:
        check_dimension_key(key)
    return value


class ViewSummary(StrictModel):
    """Everything measured for one view (raw model, or model behind the gateway)."""

    values: dict[str, DimensionStat]
    paired: dict[str, PairedStat] = Field(default_factory=dict)
    noise: dict[str, float] = Field(default_factory=dict)

    @field_validator("values", "paired")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_keys(value)
        return value

    @field_validator("noise")
    @classmethod
    def _noise_keys(cls, value: dict[str, float]) -> dict[str, float]:
        _check_keys(value)
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"noise must be >= 0 (a standard deviation); got {negative}")
        return value


class Look(StrictModel):
    """One look of a staged evaluation: what was evaluated and what the gate said then.

    Attributes:
        fractions: suite name -> share of its sample families evaluated, in (0, 1].
        decision: the gate's decision at this look (``pass``, ``block``, ``inconclusive``).
        extended: keys that were inconclusive, so their suites got more samples next.
    """

    fractions: dict[str, float]
    decision: str
    extended: list[str] = Field(default_factory=list)


class EvalSummary(StrictModel):
    """The JSON summary of one evaluation, as the gate reads it. See the module docstring.

    ``looks`` records a staged evaluation's looks in order (empty: one look at everything).
    """

    schema_version: int = 1
    model_uri: str
    baseline_uri: str | None = None
    views: dict[View, ViewSummary]
    errors: int = Field(default=0, ge=0)
    eval_run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    looks: list[Look] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(
                f"unknown schema_version {value}; this loopwright reads "
                f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        return value

    @model_validator(mode="after")
    def _paired_needs_baseline(self) -> EvalSummary:
        if self.baseline_uri is None and any(v.paired for v in self.views.values()):
            raise ValueError("paired comparisons are present but baseline_uri is null")
        if not self.views:
            raise ValueError(f"views is empty; expected at least one of {list(VIEWS)}")
        return self


def load_summary(path: str | Path) -> EvalSummary:
    """Read an :class:`EvalSummary` JSON file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read eval summary ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return parse_model(EvalSummary, data, str(path))


def _pick(metrics: list[MetricValue], key: str, wanted: str | None, source: str) -> MetricValue:
    if not metrics:
        raise ConfigError(f"{source}: slice {key!r} has no metrics")
    if wanted is None:
        return metrics[0]  # convention: an EvalReport lists a slice's primary metric first
    for metric in metrics:
        if metric.metric == wanted:
            return metric
    raise ConfigError(
        f"{source}: slice {key!r} has no metric {wanted!r}; it has {[m.metric for m in metrics]}"
    )


def view_from_report(
    report: EvalReport,
    *,
    paired: Mapping[str, PairedStat] | None = None,
    noise: Mapping[str, float] | None = None,
    metric_for: Mapping[str, str] | None = None,
) -> ViewSummary:
    """Turn one :class:`EvalReport` into a :class:`ViewSummary`.

    Args:
        report: its ``slices`` keys ``"<dim>/all"`` become ``"<dim>"``; other slices keep
            their ``"<dim>/<slice>"`` key.
        paired: candidate-minus-baseline stats per key (already in summary key form).
        noise: run-to-run standard deviation per key.
        metric_for: which metric to take per key; default the first listed in the slice.

    Raises:
        ConfigError: a requested metric is missing, or a key names an unknown dimension.

    """
    metric_for = metric_for or {}
    values: dict[str, DimensionStat] = {}
    for raw_key, metrics in report.slices.items():
        key = raw_key.removesuffix("/all")
        chosen = _pick(metrics, key, metric_for.get(key), f"EvalReport({report.model_uri})")
        values[key] = DimensionStat(
            metric=chosen.metric,
            value=chosen.value,
            ci_low=chosen.ci_low,
            ci_high=chosen.ci_high,
            n=chosen.n,
        )
    data = {"values": values, "paired": dict(paired or {}), "noise": dict(noise or {})}
    return parse_model(ViewSummary, data, f"EvalReport({report.model_uri})")


def summary_from_reports(
    raw: EvalReport,
    gateway: EvalReport | None = None,
    *,
    baseline_uri: str | None = None,
    paired_raw: Mapping[str, PairedStat] | None = None,
    paired_gateway: Mapping[str, PairedStat] | None = None,
    noise_raw: Mapping[str, float] | None = None,
    noise_gateway: Mapping[str, float] | None = None,
    metric_for: Mapping[str, str] | None = None,
    eval_run_id: str | None = None,
) -> EvalSummary:
    """Build the gate's :class:`EvalSummary` from the evaluation's report(s).

    ``errors`` is the sum of the reports' error counts (errors are never dropped).
    """
    views: dict[str, ViewSummary] = {
        "raw": view_from_report(raw, paired=paired_raw, noise=noise_raw, metric_for=metric_for)
    }
    errors = raw.errors
    if gateway is not None:
        views["gateway"] = view_from_report(
            gateway, paired=paired_gateway, noise=noise_gateway, metric_for=metric_for
        )
        errors += gateway.errors
    data = {
        "model_uri": raw.model_uri,
        "baseline_uri": baseline_uri,
        "views": views,
        "errors": errors,
        "eval_run_id": eval_run_id,
    }
    return parse_model(EvalSummary, data, f"EvalReport({raw.model_uri})")
