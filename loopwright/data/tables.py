"""The curated tables: their folder layout, column schemas, and record <-> row conversion.

Layout of a data folder (``out_dir``)::

    interactions.parquet   committed interactions (passed every contract), cumulative
    feedback.parquet       committed feedback events, cumulative
    quarantine.parquet     every rejected row with its stage and reason, cumulative
    watermark.json         which log objects were consumed (ingest is incremental)
    batches.json           every batch: state, counts, reasons, stats (the history)
    staging/batch-NNNNNN/  a batch that is ingested but not yet committed or rejected

Tables flatten the records into typed columns for contracts and queries, and keep the
exact record JSON in ``record`` so nothing is lost and records can be rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from loopwright.records import FeedbackEvent, Interaction

# column -> pandas dtype. "str" is pandas 3's string dtype (missing values are NaN).
INTERACTION_SCHEMA: dict[str, str] = {
    "id": "str",
    "timestamp": "datetime64[us, UTC]",
    "tenant": "str",
    "user_hash": "str",
    "session_id": "str",
    "model_name": "str",
    "model_version": "str",
    "route": "str",
    "system_prompt_version": "str",
    "prompt": "str",
    "n_messages": "int64",
    "response": "str",
    "finish_reason": "str",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "latency_ms": "float64",
    "status_code": "int64",
    "input_action": "str",
    "input_reasons": "str",
    "output_action": "str",
    "output_reasons": "str",
    "fallback_used": "bool",
    "escalated": "bool",
    "error": "str",
    "schema_version": "int64",
    "source_object": "str",
    "source_line": "int64",
    "batch": "int64",
    "record": "str",
}

FEEDBACK_SCHEMA: dict[str, str] = {
    "id": "str",
    "interaction_id": "str",
    "kind": "str",
    "source": "str",
    "author": "str",
    "timestamp": "datetime64[us, UTC]",
    "rating": "float64",
    "text": "str",
    "chosen": "str",
    "rejected": "str",
    "label": "str",
    "value_json": "str",
    "schema_version": "int64",
    "source_object": "str",
    "source_line": "int64",
    "batch": "int64",
    "record": "str",
}

QUARANTINE_SCHEMA: dict[str, str] = {
    "key": "str",
    "stage": "str",
    "table": "str",
    "batch": "int64",
    "source_object": "str",
    "source_line": "int64",
    "record_id": "str",
    "reason": "str",
    "detail": "str",
    "raw": "str",
}

TABLE_SCHEMAS: dict[str, dict[str, str]] = {
    "interactions": INTERACTION_SCHEMA,
    "feedback": FEEDBACK_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
}


@dataclass(frozen=True)
class DataLayout:
    """Paths of one data folder (see the module docstring)."""

    root: Path

    @property
    def interactions(self) -> Path:
        """Committed interactions table."""
        return self.root / "interactions.parquet"

    @property
    def feedback(self) -> Path:
        """Committed feedback table."""
        return self.root / "feedback.parquet"

    @property
    def quarantine(self) -> Path:
        """Quarantine table (all stages)."""
        return self.root / "quarantine.parquet"

    @property
    def watermark(self) -> Path:
        """Ingest watermark (JSON)."""
        return self.root / "watermark.json"

    @property
    def batches(self) -> Path:
        """Batch manifest (JSON)."""
        return self.root / "batches.json"

    def staging(self, batch: int) -> Path:
        """Staging folder of one batch."""
        return self.root / "staging" / f"batch-{batch:06d}"

    def staged(self, batch: int, table: str) -> Path:
        """A staged table (``interactions`` or ``feedback``) of one batch."""
        return self.staging(batch) / f"{table}.parquet"


def empty_frame(schema: Mapping[str, str]) -> pd.DataFrame:
    """An empty DataFrame with exactly the schema's columns and dtypes."""
    return pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in schema.items()})


def coerce(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame, schema: Mapping[str, str]
) -> pd.DataFrame:
    """Build a frame with exactly the schema's columns, in order, with the schema's dtypes.

    Raises:
        ValueError: a column is missing from ``rows`` (when rows are given), naming it.

    """
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty and len(frame.columns) == 0:
        return empty_frame(schema)
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ValueError(f"table is missing columns {missing}; expected {list(schema)}")
    out = frame[list(schema)].copy()
    for col, dtype in schema.items():
        if dtype.startswith("datetime64"):
            out[col] = pd.to_datetime(out[col], utc=True).astype(dtype)
        else:
            out[col] = out[col].astype(dtype)
    return out.reset_index(drop=True)


def read_table(path: Path, schema: Mapping[str, str]) -> pd.DataFrame:
    """Read a Parquet table, or an empty frame of the schema when the file does not exist."""
    if not path.is_file():
        return empty_frame(schema)
    return coerce(pd.read_parquet(path), schema)


def write_table(path: Path, frame: pd.DataFrame, schema: Mapping[str, str]) -> int:
    """Write a table atomically (temp file + rename); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    coerce(frame, schema).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return len(frame)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), sorted keys, for stable diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", "utf-8")
    os.replace(tmp, path)


def last_user_message(record: Interaction) -> str:
    """The content of the last user message ("" when there is none)."""
    for message in reversed(record.messages):
        if message.role == "user":
            return message.content
    return ""


def interaction_row(
    record: Interaction, source_object: str, source_line: int, batch: int
) -> dict[str, Any]:
    """Flatten an interaction into a table row (the full record stays in ``record``)."""
    return {
        "id": record.id,
        "timestamp": record.timestamp,
        "tenant": record.tenant,
        "user_hash": record.user_hash,
        "session_id": record.session_id,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "route": record.route,
        "system_prompt_version": record.system_prompt_version,
        "prompt": last_user_message(record),
        "n_messages": len(record.messages),
        "response": record.response,
        "finish_reason": record.finish_reason,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_ms": record.latency_ms,
        "status_code": record.status_code,
        "input_action": record.input_verdict.action,
        "input_reasons": json.dumps(record.input_verdict.reasons),
        "output_action": record.output_verdict.action,
        "output_reasons": json.dumps(record.output_verdict.reasons),
        "fallback_used": record.fallback_used,
        "escalated": record.escalated,
        "error": record.error,
        "schema_version": record.schema_version,
        "source_object": source_object,
        "source_line": source_line,
        "batch": batch,
        "record": record.model_dump_json(),
    }


def _rating(value: Any) -> float | None:
    # bool is an int subclass: True is not a thumbs value.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def feedback_row(
    record: FeedbackEvent, source_object: str, source_line: int, batch: int
) -> dict[str, Any]:
    """Flatten a feedback event into a table row.

    ``rating`` is set for numeric rating values, ``text`` for string corrections,
    ``chosen``/``rejected`` for preference dicts and ``label`` for string reviewer labels;
    a value of the wrong shape leaves its column empty, which the contracts then catch.
    """
    value = record.value
    rating = _rating(value) if record.kind == "rating" else None
    text = value if record.kind == "correction" and isinstance(value, str) else None
    label = value if record.kind == "reviewer_label" and isinstance(value, str) else None
    chosen = rejected = None
    if record.kind == "preference" and isinstance(value, dict):
        chosen = value.get("chosen") if isinstance(value.get("chosen"), str) else None
        rejected = value.get("rejected") if isinstance(value.get("rejected"), str) else None
    return {
        "id": record.id,
        "interaction_id": record.interaction_id,
        "kind": record.kind,
        "source": record.source,
        "author": record.author,
        "timestamp": record.timestamp,
        "rating": rating,
        "text": text,
        "chosen": chosen,
        "rejected": rejected,
        "label": label,
        "value_json": json.dumps(value, sort_keys=True),
        "schema_version": record.schema_version,
        "source_object": source_object,
        "source_line": source_line,
        "batch": batch,
        "record": record.model_dump_json(),
    }


def quarantine_row(
    *,
    stage: str,
    table: str,
    batch: int,
    reason: str,
    detail: str,
    raw: str,
    source_object: str = "",
    source_line: int = 0,
    record_id: str | None = None,
) -> dict[str, Any]:
    """One quarantine row.

    The key identifies what was quarantined, so re-quarantining the same thing replaces
    the row instead of adding one: ``<source object>:<line>`` for rows that never parsed
    into a record, ``<table>:<record id>`` for records.
    """
    key = f"{table}:{record_id}" if record_id else f"{source_object}:{source_line}"
    return {
        "key": key,
        "stage": stage,
        "table": table,
        "batch": batch,
        "source_object": source_object,
        "source_line": source_line,
        "record_id": record_id,
        "reason": reason,
        "detail": detail,
        "raw": raw,
    }


def rows_to_quarantine(
    frame: pd.DataFrame, reasons: Mapping[Any, list[str]], *, stage: str, table: str
) -> pd.DataFrame:
    """Quarantine rows for the frame rows whose index label is in ``reasons``.

    ``reason`` holds the reason codes joined by ``"; "``; ``raw`` the record JSON.
    """
    rows = []
    for label, why in reasons.items():
        row = frame.loc[label]
        rows.append(
            quarantine_row(
                stage=stage,
                table=table,
                batch=int(row["batch"]),
                reason="; ".join(why),
                detail=f"{stage} rejected {table} record {row['id']}: {'; '.join(why)}",
                raw=str(row["record"]),
                source_object=str(row["source_object"]),
                source_line=int(row["source_line"]),
                record_id=str(row["id"]),
            )
        )
    return coerce(rows, QUARANTINE_SCHEMA) if rows else empty_frame(QUARANTINE_SCHEMA)


def append_quarantine(layout: DataLayout, rows: pd.DataFrame) -> int:
    """Add rows to the quarantine table (a row with an existing key replaces it).

    Returns:
        The number of rows the table grew by.

    """
    if rows.empty:
        return 0
    current = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    before = len(current)
    merged = pd.concat([current[~current["key"].isin(rows["key"])], rows], ignore_index=True)
    write_table(layout.quarantine, merged, QUARANTINE_SCHEMA)
    return len(merged) - before
