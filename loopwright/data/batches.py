"""Batches: the unit that is ingested, validated, screened and then committed or rejected.

A batch moves ``staged -> validated -> screened -> committed``; a failed validation or
screening moves it to ``rejected`` instead, and every one of its rows goes to the
quarantine table with the batch's reasons. Only committed rows ever reach the curated
tables that training reads, so a bad batch cannot leak into training whatever the caller
does next. The manifest (``batches.json``) is also the history that volume and
rate-shift checks compare a new batch against.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopwright.data.tables import (
    FEEDBACK_SCHEMA,
    INTERACTION_SCHEMA,
    DataLayout,
    append_quarantine,
    coerce,
    read_table,
    rows_to_quarantine,
    write_json,
    write_table,
)

logger = logging.getLogger(__name__)

BatchState = Literal["staged", "validated", "screened", "committed", "rejected"]
_OPEN_STATES: frozenset[str] = frozenset({"staged", "validated", "screened"})


class BatchError(RuntimeError):
    """A batch operation was asked for in the wrong state (the message says which)."""


class BatchStats(BaseModel):
    """Size and label statistics of a batch, used as history by later batches.

    Attributes:
        n_interactions / n_feedback: rows in the batch.
        n_ratings: rating events among the feedback.
        positive_rate: share of ratings that are +1 (None without ratings).

    """

    model_config = ConfigDict(extra="forbid")

    n_interactions: int = 0
    n_feedback: int = 0
    n_ratings: int = 0
    positive_rate: float | None = None


class BatchRecord(BaseModel):
    """One batch in the manifest.

    Attributes:
        batch: batch number (1, 2, ...).
        state: where it is in its life (see the module docstring).
        stats: statistics of the rows as ingested (updated at commit).
        reasons: why it was rejected (empty otherwise).
        validation / screening: summaries the stages left (counts, bad fractions).

    """

    model_config = ConfigDict(extra="forbid")

    batch: int = Field(ge=1)
    state: BatchState = "staged"
    stats: BatchStats = Field(default_factory=BatchStats)
    reasons: list[str] = Field(default_factory=list)
    validation: dict[str, Any] | None = None
    screening: dict[str, Any] | None = None


class BatchManifest(BaseModel):
    """All batches of a data folder, by number."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    batches: dict[int, BatchRecord] = Field(default_factory=dict)

    def get(self, batch: int) -> BatchRecord:
        """The record of one batch.

        Raises:
            BatchError: no such batch (the message lists the known ones).

        """
        if batch not in self.batches:
            raise BatchError(f"no batch {batch}; known batches: {sorted(self.batches)}")
        return self.batches[batch]

    def open_batches(self) -> list[int]:
        """Batches ingested but neither committed nor rejected."""
        return sorted(b for b, r in self.batches.items() if r.state in _OPEN_STATES)

    def committed(self) -> list[BatchRecord]:
        """Committed batches, oldest first."""
        return [
            self.batches[b] for b in sorted(self.batches) if self.batches[b].state == "committed"
        ]

    def next_number(self) -> int:
        """The number a new batch gets."""
        return max(self.batches, default=0) + 1


def load_manifest(layout: DataLayout) -> BatchManifest:
    """Read ``batches.json`` (an empty manifest when it does not exist)."""
    if not layout.batches.is_file():
        return BatchManifest()
    return BatchManifest.model_validate(json.loads(layout.batches.read_text("utf-8")))


def save_manifest(layout: DataLayout, manifest: BatchManifest) -> None:
    """Write ``batches.json`` atomically."""
    write_json(layout.batches, manifest.model_dump(mode="json"))


def batch_stats(interactions: pd.DataFrame, feedback: pd.DataFrame) -> BatchStats:
    """Statistics of a batch's rows (see :class:`BatchStats`)."""
    ratings = feedback.loc[feedback["kind"] == "rating", "rating"].dropna()
    return BatchStats(
        n_interactions=len(interactions),
        n_feedback=len(feedback),
        n_ratings=len(ratings),
        positive_rate=float((ratings > 0).mean()) if len(ratings) else None,
    )


def read_staged(layout: DataLayout, batch: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The staged interactions and feedback of a batch (empty frames when absent)."""
    return (
        read_table(layout.staged(batch, "interactions"), INTERACTION_SCHEMA),
        read_table(layout.staged(batch, "feedback"), FEEDBACK_SCHEMA),
    )


def write_staged(
    layout: DataLayout, batch: int, interactions: pd.DataFrame, feedback: pd.DataFrame
) -> None:
    """Replace the staged tables of a batch."""
    write_table(layout.staged(batch, "interactions"), interactions, INTERACTION_SCHEMA)
    write_table(layout.staged(batch, "feedback"), feedback, FEEDBACK_SCHEMA)


def reject_batch(out_dir: Path, batch: int, reasons: list[str], stage: str = "batch") -> int:
    """Reject a batch: every staged row goes to quarantine with the reasons; staging is removed.

    Idempotent: rejecting a rejected batch does nothing.

    Args:
        out_dir: the data folder.
        batch: batch number.
        reasons: why (stored in the manifest and, joined, in each quarantine row).
        stage: the stage that rejected it (``validate``, ``screen``, ...).

    Returns:
        The number of rows moved to quarantine.

    Raises:
        BatchError: the batch is unknown or already committed.

    """
    layout = DataLayout(Path(out_dir))
    manifest = load_manifest(layout)
    record = manifest.get(batch)
    if record.state == "rejected":
        return 0
    if record.state == "committed":
        raise BatchError(f"batch {batch} is already committed; it cannot be rejected")
    interactions, feedback = read_staged(layout, batch)
    why = [f"batch_rejected:{stage}"]
    rows = pd.concat(
        [
            rows_to_quarantine(
                interactions,
                {i: why for i in interactions.index},
                stage=stage,
                table="interactions",
            ),
            rows_to_quarantine(
                feedback, {i: why for i in feedback.index}, stage=stage, table="feedback"
            ),
        ],
        ignore_index=True,
    )
    if not rows.empty:
        rows["detail"] = f"batch {batch} rejected by {stage}: " + "; ".join(reasons)
    append_quarantine(layout, rows)
    record.state = "rejected"
    record.reasons = list(reasons)
    save_manifest(layout, manifest)
    shutil.rmtree(layout.staging(batch), ignore_errors=True)
    logger.warning(
        "batch %d rejected by %s (%d rows quarantined): %s", batch, stage, len(rows), reasons
    )
    return len(rows)


def commit_batch(out_dir: Path, batch: int, *, require_screening: bool = True) -> BatchStats:
    """Append a batch that passed its contracts to the curated tables.

    Idempotent: committing a committed batch returns its stats and changes nothing.

    Args:
        out_dir: the data folder.
        batch: batch number.
        require_screening: also require the feedback screening to have passed (state
            ``screened``); False accepts ``validated`` (for data without feedback screening).

    Returns:
        The statistics of the committed rows.

    Raises:
        BatchError: the batch is unknown, rejected, or has not passed the required stages.

    """
    layout = DataLayout(Path(out_dir))
    manifest = load_manifest(layout)
    record = manifest.get(batch)
    if record.state == "committed":
        return record.stats
    ready = {"screened"} if require_screening else {"screened", "validated"}
    if record.state not in ready:
        raise BatchError(
            f"batch {batch} is {record.state!r}; commit needs state in {sorted(ready)} "
            "(run validation and screening first; a rejected batch is never committed)"
        )
    staged_i, staged_f = read_staged(layout, batch)
    for path, staged, schema in (
        (layout.interactions, staged_i, INTERACTION_SCHEMA),
        (layout.feedback, staged_f, FEEDBACK_SCHEMA),
    ):
        current = read_table(path, schema)
        # Ingest already dedupes against committed rows; this keeps a crash between the
        # table writes and the manifest write from ever duplicating a row on retry.
        fresh = staged[~staged["id"].isin(current["id"])]
        write_table(path, pd.concat([current, coerce(fresh, schema)], ignore_index=True), schema)
    record.state = "committed"
    record.stats = batch_stats(staged_i, staged_f)
    save_manifest(layout, manifest)
    shutil.rmtree(layout.staging(batch), ignore_errors=True)
    logger.info("batch %d committed: %s", batch, record.stats)
    return record.stats
