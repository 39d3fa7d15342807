"""Data contracts: Great Expectations suites over a staged batch, row-level quarantine.

Two suites run on every batch, one per table:

* ``interactions``: schema (exact column set and types), nulls, enums (route, rail
  actions, finish reason), ranges (latency, token counts), lengths (prompt, response),
  unique ids, and volume against the sizes of recent committed batches.
* ``feedback``: schema, nulls, enums (kind, source, reviewer label), a rating of -1 or +1
  on every rating event, a non-empty bounded correction text, both sides of a
  preference, a gold mark only from a reviewer and only ``true``, unique ids, and label
  balance (the share of negative ratings).

Row-level expectations (``expect_column_values_to_...``) quarantine exactly the rows they
flag (GE's ``unexpected_index_list`` under ``result_format="COMPLETE"``), each with the
expectation and column as its reason; feedback on a quarantined interaction follows it.
Table-level expectations (schema, volume, label balance) and drift fail the whole batch.
Drift is a population-stability index (PSI) of a few columns against the rows of recent
committed batches: GE 1.24 has no PSI expectation, and its KL-divergence one needs a
hand-built partition object anyway, so the few lines of numpy live here.

A batch fails when a table-level check fails or when the share of quarantined rows
exceeds :attr:`ContractConfig.max_bad_fraction`; it is then rejected as a whole (see
:func:`loopwright.data.batches.reject_batch`). ``accepted + quarantined == ingested``
always holds.

Data Docs are built into a fixed folder per run (``docs_dir``; wiped first), next to a
``validation.json`` with the result, so the caller can log the folder as an artifact.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loopwright.data.batches import (
    BatchError,
    load_manifest,
    read_staged,
    reject_batch,
    save_manifest,
    write_staged,
)
from loopwright.data.tables import (
    FEEDBACK_SCHEMA,
    INTERACTION_SCHEMA,
    DataLayout,
    append_quarantine,
    read_table,
    rows_to_quarantine,
    write_json,
)
from loopwright.records import FeedbackKind, FeedbackSource, RailAction, Route

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

logger = logging.getLogger(__name__)

STAGE = "validate"
# Labels reviewers may set: the example domain's simulator labels plus the gateway's queue.
DEFAULT_REVIEW_LABELS: tuple[str, ...] = (
    "good",
    "unsafe",
    "unhelpful_refusal",
    "over_refusal",
    "stale_fact",
    "wrong_fact",
    "missed_answer",
    "hallucination",
    "pii_leak",
    "other",
)
DRIFT_COLUMNS: tuple[str, ...] = ("prompt_chars", "response_chars", "input_action", "output_action")
_NUMERIC_DRIFT = {"prompt_chars": "prompt", "response_chars": "response"}
# Columns that describe the model's output: compared only within the same served versions.
OUTPUT_SIDE_DRIFT: frozenset[str] = frozenset({"response_chars", "output_action"})


class ContractConfig(BaseModel):
    """Thresholds of the data contracts.

    Attributes:
        max_bad_fraction: a batch fails when more than this share of its rows is
            quarantined by row-level expectations, in [0, 1].
        max_latency_ms: upper bound of ``latency_ms``, milliseconds.
        max_tokens: upper bound of prompt and completion token counts.
        max_prompt_chars / max_response_chars / max_correction_chars: length bounds,
            characters.
        routes / rail_actions / finish_reasons / feedback_kinds / feedback_sources /
            review_labels: allowed values of the enum columns.
        volume_history: how many recent committed batches the volume check compares to.
        volume_min_history: below this many, the volume check is skipped (and says so).
        volume_min_ratio / volume_max_ratio: allowed batch size relative to the median of
            the history.
        min_negative_share / max_negative_share: allowed share of -1 ratings.
        min_ratings_for_balance: below this many ratings, label balance is skipped.
        drift_columns: columns compared by PSI (``prompt_chars``, ``response_chars`` are
            derived lengths; others are categorical columns of the interactions table).
        psi_threshold: a column drifts when its PSI exceeds this (0.25 is the usual
            "significant shift" level).
        drift_min_rows: both the batch and the reference need this many rows, else drift
            is skipped (and says so).
        drift_bins: quantile bins for numeric columns.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bad_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    max_latency_ms: float = Field(default=120_000.0, gt=0)
    max_tokens: int = Field(default=8192, ge=1)
    max_prompt_chars: int = Field(default=8000, ge=1)
    max_response_chars: int = Field(default=8000, ge=1)
    max_correction_chars: int = Field(default=2000, ge=1)
    routes: tuple[str, ...] = get_args(Route)
    rail_actions: tuple[str, ...] = get_args(RailAction)
    finish_reasons: tuple[str, ...] = ("stop", "length", "content_filter")
    feedback_kinds: tuple[str, ...] = get_args(FeedbackKind)
    feedback_sources: tuple[str, ...] = get_args(FeedbackSource)
    review_labels: tuple[str, ...] = DEFAULT_REVIEW_LABELS
    volume_history: int = Field(default=7, ge=1)
    volume_min_history: int = Field(default=3, ge=1)
    volume_min_ratio: float = Field(default=0.25, gt=0)
    volume_max_ratio: float = Field(default=4.0, gt=0)
    min_negative_share: float = Field(default=0.0, ge=0.0, le=1.0)
    max_negative_share: float = Field(default=0.6, ge=0.0, le=1.0)
    min_ratings_for_balance: int = Field(default=20, ge=1)
    drift_columns: tuple[str, ...] = DRIFT_COLUMNS
    psi_threshold: float = Field(default=0.25, gt=0)
    drift_min_rows: int = Field(default=50, ge=1)
    drift_bins: int = Field(default=10, ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> ContractConfig:
        if self.volume_min_ratio >= self.volume_max_ratio:
            raise ValueError(
                f"volume_min_ratio ({self.volume_min_ratio}) must be below volume_max_ratio "
                f"({self.volume_max_ratio})"
            )
        if self.min_negative_share > self.max_negative_share:
            raise ValueError(
                f"min_negative_share ({self.min_negative_share}) must not exceed "
                f"max_negative_share ({self.max_negative_share})"
            )
        valid = set(_NUMERIC_DRIFT) | {
            c for c, t in INTERACTION_SCHEMA.items() if t in ("str", "bool")
        }
        unknown = sorted(set(self.drift_columns) - valid)
        if unknown:
            raise ValueError(f"unknown drift_columns {unknown}; valid: {sorted(valid)}")
        return self


@dataclass(frozen=True)
class ContractReport:
    """What the suites found on two frames (pure: no files touched but the docs folder).

    Attributes:
        interaction_reasons / feedback_reasons: frame index label -> reasons of the rows
            row-level expectations flagged.
        batch_reasons: failed table-level checks and drifted columns.
        notes: checks that were skipped and why (no history, too few rows).
        drift: column -> PSI against the reference (columns that were compared).
        expectations: one summary line per expectation (type, column, success).

    """

    interaction_reasons: dict[Any, list[str]]
    feedback_reasons: dict[Any, list[str]]
    batch_reasons: list[str]
    notes: list[str]
    drift: dict[str, float]
    expectations: list[dict[str, Any]]


@dataclass(frozen=True)
class ValidationResult:
    """The verdict on one batch.

    Attributes:
        passed: the batch may go on (to screening, then commit).
        bad_fraction: rows quarantined by row-level expectations / rows ingested.
        reasons: why it failed (empty when it passed).
        docs_path: the Data Docs folder of this run (``index.html`` inside).
        counts: ``ingested``, ``accepted``, ``quarantined`` (= ``row_quarantined`` +
            ``batch_quarantined``), and per table ``interactions_*`` / ``feedback_*``.
        notes: skipped checks and why.
        drift: column -> PSI.
        batch: the batch number.

    """

    passed: bool
    bad_fraction: float
    reasons: list[str]
    docs_path: Path
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)
    batch: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (for the manifest, MLflow, the docs folder)."""
        data = asdict(self)
        data["docs_path"] = str(self.docs_path)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationResult:
        """Inverse of :meth:`to_json`."""
        return cls(**{**data, "docs_path": Path(data["docs_path"])})


# ----------------------------------------------------------------------------- drift


def population_stability_index(
    reference: Sequence[Any] | pd.Series,
    current: Sequence[Any] | pd.Series,
    *,
    bins: int = 10,
    categorical: bool = False,
) -> float:
    """PSI of ``current`` against ``reference``: sum over bins of (c - r) * ln(c / r).

    Numeric values are binned at the reference's quantiles (open-ended outer bins);
    categorical values bin by value. Empty bins get a share of 1e-4 so the log stays
    finite. 0 means identical distributions; > 0.25 is conventionally a large shift.

    Raises:
        ValueError: either side is empty.

    """
    ref = pd.Series(reference).dropna()
    cur = pd.Series(current).dropna()
    if ref.empty or cur.empty:
        raise ValueError("PSI needs values on both sides")
    if categorical:
        cats = sorted(set(ref.astype(str)) | set(cur.astype(str)))
        r = ref.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0.0).to_numpy()
        c = cur.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0.0).to_numpy()
    else:
        edges = np.unique(np.quantile(ref.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)[1:-1]))
        r = np.bincount(
            np.searchsorted(edges, ref.to_numpy(dtype=float), side="right"),
            minlength=len(edges) + 1,
        ) / len(ref)
        c = np.bincount(
            np.searchsorted(edges, cur.to_numpy(dtype=float), side="right"),
            minlength=len(edges) + 1,
        ) / len(cur)
    eps = 1e-4
    r = np.clip(r, eps, None)
    c = np.clip(c, eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _drift_values(frame: pd.DataFrame, column: str) -> pd.Series:
    if column in _NUMERIC_DRIFT:
        return frame[_NUMERIC_DRIFT[column]].fillna("").str.len()
    return frame[column]


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, config: ContractConfig
) -> tuple[dict[str, float], list[str], list[str]]:
    """PSI per drift column; returns (psi by column, failure reasons, notes)."""
    if len(reference) < config.drift_min_rows or len(current) < config.drift_min_rows:
        return (
            {},
            [],
            [
                f"drift skipped: needs {config.drift_min_rows} rows on both sides (reference "
                f"{len(reference)}, batch {len(current)})"
            ],
        )
    psi: dict[str, float] = {}
    reasons: list[str] = []
    notes: list[str] = []
    for column in config.drift_columns:
        ref, cur = reference, current
        if column in OUTPUT_SIDE_DRIFT:
            # What the model says changes, legitimately, when a new version serves: compare
            # output-side columns only on rows served by the same versions on both sides, so
            # the first night after a promotion is not rejected for having a new model.
            shared = set(reference["model_version"].dropna()) & set(
                current["model_version"].dropna()
            )
            ref = reference[reference["model_version"].isin(shared)]
            cur = current[current["model_version"].isin(shared)]
            if len(ref) < config.drift_min_rows or len(cur) < config.drift_min_rows:
                notes.append(
                    f"drift:{column} skipped: too few rows served by the same model versions "
                    f"on both sides (reference {len(ref)}, batch {len(cur)})"
                )
                continue
        value = population_stability_index(
            _drift_values(ref, column),
            _drift_values(cur, column),
            bins=config.drift_bins,
            categorical=column not in _NUMERIC_DRIFT,
        )
        psi[column] = round(value, 4)
        if value > config.psi_threshold:
            reasons.append(f"drift:{column} (PSI {value:.3f} > {config.psi_threshold})")
    return psi, reasons, notes


# ----------------------------------------------------------------------------- suites


def _interaction_expectations(config: ContractConfig, volume: tuple[int, int] | None) -> list[Any]:
    import great_expectations.expectations as gxe

    not_null = ("id", "timestamp", "tenant", "user_hash", "route", "input_action", "output_action")
    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(INTERACTION_SCHEMA), exact_match=True),
        *(
            gxe.ExpectColumnValuesToBeOfType(column=c, type_="str")
            for c in ("id", "tenant", "prompt")
        ),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in not_null),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="route", value_set=list(config.routes)),
        gxe.ExpectColumnValuesToBeInSet(column="input_action", value_set=list(config.rail_actions)),
        gxe.ExpectColumnValuesToBeInSet(
            column="output_action", value_set=list(config.rail_actions)
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="finish_reason", value_set=list(config.finish_reasons)
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="latency_ms", min_value=0, max_value=config.max_latency_ms
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="prompt_tokens", min_value=0, max_value=config.max_tokens
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="completion_tokens", min_value=0, max_value=config.max_tokens
        ),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="prompt", min_value=1, max_value=config.max_prompt_chars
        ),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="response", min_value=0, max_value=config.max_response_chars
        ),
        # A request the gateway answered (200) must have logged the answer.
        gxe.ExpectColumnValuesToNotBeNull(
            column="response", row_condition="status_code==200", condition_parser="pandas"
        ),
    ]
    if volume is not None:
        exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=volume[0], max_value=volume[1]))
    return exps


def _feedback_expectations(config: ContractConfig, balance: bool) -> list[Any]:
    import great_expectations.expectations as gxe

    def when(kind: str) -> dict[str, Any]:
        return {"row_condition": f'kind=="{kind}"', "condition_parser": "pandas"}

    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(FEEDBACK_SCHEMA), exact_match=True),
        *(
            gxe.ExpectColumnValuesToBeOfType(column=c, type_="str")
            for c in ("id", "interaction_id", "kind")
        ),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("id", "interaction_id", "kind", "source", "author", "timestamp")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(config.feedback_kinds)),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(config.feedback_sources)),
        gxe.ExpectColumnValuesToNotBeNull(column="rating", **when("rating")),
        gxe.ExpectColumnValuesToBeInSet(column="rating", value_set=[-1.0, 1.0], **when("rating")),
        gxe.ExpectColumnValuesToNotBeNull(column="text", **when("correction")),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=1, max_value=config.max_correction_chars, **when("correction")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="chosen", **when("preference")),
        gxe.ExpectColumnValuesToNotBeNull(column="rejected", **when("preference")),
        gxe.ExpectColumnValuesToNotBeNull(column="label", **when("reviewer_label")),
        gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(config.review_labels), **when("reviewer_label")
        ),
        # Gold marks come from the review queue only: a reviewer, value true.
        gxe.ExpectColumnValuesToBeInSet(column="value_json", value_set=["true"], **when("gold")),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=["reviewer"], **when("gold")),
    ]
    if balance:
        # mean rating = 1 - 2 * negative share, so the share bounds map to mean bounds.
        exps.append(
            gxe.ExpectColumnMeanToBeBetween(
                column="rating",
                min_value=1 - 2 * config.max_negative_share,
                max_value=1 - 2 * config.min_negative_share,
                **when("rating"),
            )
        )
    return exps


def _reason(config: Any) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}:{column}" if column else str(config.type)


def _batch_reason(config: Any, result: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column_set")}
    observed = result.result.get("observed_value")
    if config.type == "expect_column_mean_to_be_between" and observed is not None:
        return (
            f"label_balance: negative share {(1 - observed) / 2:.3f} outside "
            f"[{(1 - kwargs['max_value']) / 2:.3f}, {(1 - kwargs['min_value']) / 2:.3f}]"
        )
    if config.type == "expect_table_row_count_to_be_between":
        return f"volume: {observed} rows outside [{kwargs['min_value']}, {kwargs['max_value']}]"
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"{_reason(config)} raised {result.exception_info.get('exception_message')}"
    details = result.result.get("details") or {}
    return (
        f"{_reason(config)} failed (observed {observed!r}{', ' + str(details) if details else ''})"
    )


def _collect(
    result: ExpectationSuiteValidationResult,
    rows: dict[Any, list[str]],
    batch_reasons: list[str],
    summary: list[dict[str, Any]],
    table: str,
) -> None:
    for r in result.results:
        config = r.expectation_config
        summary.append({"table": table, "expectation": _reason(config), "success": bool(r.success)})
        if r.success:
            continue
        indexes = r.result.get("unexpected_index_list")
        raised = bool(r.exception_info and r.exception_info.get("raised_exception"))
        if indexes is None or raised:
            batch_reasons.append(f"{table}: {_batch_reason(config, r)}")
            continue
        for label in indexes:
            rows.setdefault(label, []).append(_reason(config))


def check_contracts(
    interactions: pd.DataFrame,
    feedback: pd.DataFrame,
    config: ContractConfig,
    *,
    history_sizes: Sequence[int] = (),
    reference: pd.DataFrame | None = None,
    docs_dir: Path | None = None,
) -> ContractReport:
    """Run both suites (and drift) on two frames; touches no table.

    Args:
        interactions: the batch's interactions (schema of :mod:`loopwright.data.tables`).
        feedback: the batch's feedback (same module).
        config: thresholds.
        history_sizes: interaction counts of recent committed batches (volume check).
        reference: interactions of recent committed batches (drift check).
        docs_dir: where to build the Data Docs site (None: no docs).

    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    notes: list[str] = []
    volume: tuple[int, int] | None = None
    if len(history_sizes) >= config.volume_min_history:
        median = float(np.median(history_sizes))
        volume = (
            math.floor(median * config.volume_min_ratio),
            math.ceil(median * config.volume_max_ratio),
        )
    else:
        notes.append(
            f"volume skipped: {len(history_sizes)} committed batches of history, needs "
            f"{config.volume_min_history}"
        )
    n_ratings = int((feedback["kind"] == "rating").sum())
    balance = n_ratings >= config.min_ratings_for_balance
    if not balance:
        notes.append(
            f"label balance skipped: {n_ratings} ratings, needs {config.min_ratings_for_balance}"
        )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites["loopwright"] = {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False,  # never phone home
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites=sites,
        ),
    )
    source = context.data_sources.add_pandas("loopwright")
    rows: dict[str, dict[Any, list[str]]] = {"interactions": {}, "feedback": {}}
    batch_reasons: list[str] = []
    summary: list[dict[str, Any]] = []
    for table, frame, expectations in (
        ("interactions", interactions, _interaction_expectations(config, volume)),
        ("feedback", feedback, _feedback_expectations(config, balance)),
    ):
        # Expectations given up front: adding them one by one re-serialises the suite each time.
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=table,
                data=source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(
                    "batch"
                ),
                suite=suite,
            )
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
        _collect(result, rows[table], batch_reasons, summary, table)
    if docs_dir is not None:
        context.build_data_docs(site_names=["loopwright"])

    drift: dict[str, float] = {}
    if reference is not None:
        drift, drift_reasons, drift_notes = drift_report(reference, interactions, config)
        batch_reasons.extend(drift_reasons)
        notes.extend(drift_notes)
    else:
        notes.append("drift skipped: no previous snapshot")
    return ContractReport(
        rows["interactions"], rows["feedback"], batch_reasons, notes, drift, summary
    )


def validate_batch(
    out_dir: Path, batch: int, docs_dir: Path, config: ContractConfig | None = None
) -> ValidationResult:
    """Validate a staged batch; quarantine bad rows; reject the batch if it fails.

    Idempotent: a batch already past validation returns the stored result (the docs
    folder of that run is left as it is).

    Args:
        out_dir: the data folder.
        batch: the batch number ingest returned.
        docs_dir: fixed folder for this run's Data Docs (wiped and rebuilt).
        config: thresholds (defaults: :class:`ContractConfig`).

    Returns:
        The verdict; when ``passed`` is False the batch is already rejected (every row in
        quarantine) and must not be trained on.

    Raises:
        BatchError: unknown batch.

    """
    config = config or ContractConfig()
    layout = DataLayout(Path(out_dir))
    manifest = load_manifest(layout)
    record = manifest.get(batch)
    if record.state != "staged":
        if record.validation is None:
            raise BatchError(f"batch {batch} is {record.state!r} and has no validation result")
        return ValidationResult.from_json(record.validation)

    interactions, feedback = read_staged(layout, batch)
    history = manifest.committed()[-config.volume_history :]
    committed = read_table(layout.interactions, INTERACTION_SCHEMA)
    reference = committed[committed["batch"].isin([h.batch for h in history])] if history else None
    docs_dir = Path(docs_dir)
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)
    report = check_contracts(
        interactions,
        feedback,
        config,
        history_sizes=[h.stats.n_interactions for h in history],
        reference=reference,
        docs_dir=docs_dir,
    )

    bad_i = dict(report.interaction_reasons)
    bad_f = dict(report.feedback_reasons)
    dropped = set(interactions.loc[list(bad_i), "id"]) if bad_i else set()
    for label, iid in feedback["interaction_id"].items():
        if iid in dropped:
            bad_f.setdefault(label, []).append("interaction_quarantined")
    ingested = len(interactions) + len(feedback)
    n_bad = len(bad_i) + len(bad_f)
    bad_fraction = n_bad / ingested if ingested else 0.0
    reasons = list(report.batch_reasons)
    if bad_fraction > config.max_bad_fraction:
        reasons.append(
            f"bad_fraction {bad_fraction:.3f} > max_bad_fraction {config.max_bad_fraction}"
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
    keep_i = interactions.drop(index=list(bad_i))
    keep_f = feedback.drop(index=list(bad_f))
    write_staged(layout, batch, keep_i, keep_f)
    kept = len(keep_i) + len(keep_f)
    counts = {
        "ingested": ingested,
        "row_quarantined": n_bad,
        "batch_quarantined": 0 if passed else kept,
        "accepted": kept if passed else 0,
        "interactions_ingested": len(interactions),
        "interactions_quarantined": len(bad_i),
        "feedback_ingested": len(feedback),
        "feedback_quarantined": len(bad_f),
    }
    counts["quarantined"] = counts["row_quarantined"] + counts["batch_quarantined"]
    result = ValidationResult(
        passed=passed,
        bad_fraction=round(bad_fraction, 6),
        reasons=reasons,
        docs_path=docs_dir,
        counts=counts,
        notes=report.notes,
        drift=report.drift,
        batch=batch,
    )
    write_json(
        docs_dir / "validation.json", {**result.to_json(), "expectations": report.expectations}
    )
    manifest = load_manifest(layout)
    manifest.batches[batch].validation = result.to_json()
    if passed:
        manifest.batches[batch].state = "validated"
        save_manifest(layout, manifest)
        logger.info("batch %d passed validation (%d quarantined of %d)", batch, n_bad, ingested)
    else:
        save_manifest(layout, manifest)
        reject_batch(layout.root, batch, reasons, stage=STAGE)
    return result
