"""Ingest: the gateway's log objects -> a staged batch of typed, deduplicated rows.

Reads every log object not yet consumed (the :class:`Watermark` lists consumed objects by
name; the gateway never changes an object's content under the same name), parses each
line into an :class:`~loopwright.records.Interaction` or
:class:`~loopwright.records.FeedbackEvent`, dedupes by record id against everything seen
before, joins feedback to known interactions, and stages the rows as batch ``N`` (see
:mod:`loopwright.data.batches`). Nothing is dropped: a line that does not parse, has an
unknown schema version, repeats an id with different content, or is feedback on an
unknown interaction becomes a quarantine row with its source object, line and reason.
Feedback quarantined as ``unknown_interaction`` is retried on every run and released when
its interaction arrives (the two logs ship independently).

Counts reconcile: ``lines_read == accepted + quarantined + duplicates``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopwright.data.batches import (
    BatchRecord,
    load_manifest,
    read_staged,
    save_manifest,
    write_staged,
)
from loopwright.data.logs import LOG_KINDS, LogKind, LogObject, logs_prefix, parse_log_uri
from loopwright.data.tables import (
    FEEDBACK_SCHEMA,
    INTERACTION_SCHEMA,
    QUARANTINE_SCHEMA,
    DataLayout,
    append_quarantine,
    coerce,
    feedback_row,
    interaction_row,
    quarantine_row,
    read_table,
    write_json,
    write_table,
)
from loopwright.records import (
    SUPPORTED_SCHEMA_VERSIONS,
    FeedbackEvent,
    Interaction,
    RecordError,
    parse_record,
)

logger = logging.getLogger(__name__)

STAGE = "ingest"
# Reason codes of ingest quarantine rows.
MALFORMED = "malformed_json"
NOT_OBJECT = "not_an_object"
UNKNOWN_VERSION = "unknown_schema_version"
INVALID = "invalid_record"
NOT_UTF8 = "not_utf8"
CONFLICT = "conflicting_duplicate"
ORPHAN = "unknown_interaction"


class ObjectReader(Protocol):
    """What ingest needs from :class:`loopwright.storage.ObjectStore`."""

    def list(self, prefix_uri: str) -> list[str]:
        """Full URIs of every object under ``prefix_uri``, sorted."""
        ...

    def get_bytes(self, uri: str) -> bytes:
        """Read one object."""
        ...


class ConsumedObject(BaseModel):
    """One log object ingest has read.

    Attributes:
        kind: ``interactions`` or ``feedback``.
        lines: non-blank lines it held.
        sha256: digest of its bytes (audit: what exactly was read).
        batch: the batch it went into.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    lines: int = Field(ge=0)
    sha256: str
    batch: int


class Watermark(BaseModel):
    """Which log objects have been consumed, so a rerun reads only what is new.

    The watermark is a set of object names rather than a timestamp because partitions are
    by segment *start* time and segments ship late (a gateway that was down ships
    yesterday's partition today): a time cut-off would skip them.

    Attributes:
        log_root: the log root URI this watermark belongs to.
        consumed: object URI -> what was read from it.

    """

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    log_root: str
    consumed: dict[str, ConsumedObject] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Watermark | None:
        """Read a watermark file (None when it does not exist)."""
        if not path.is_file():
            return None
        return cls.model_validate(json.loads(path.read_text("utf-8")))

    def save(self, path: Path) -> None:
        """Write the watermark atomically."""
        write_json(path, self.model_dump(mode="json"))


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run did.

    Attributes:
        batch: the staged batch the rows went into (None when nothing new was read).
        objects_read: log objects read this run.
        lines_read: non-blank lines in them.
        accepted_interactions / accepted_feedback: rows staged from those lines.
        quarantined: lines quarantined (by reason in ``quarantine_reasons``).
        duplicates: lines repeating an already-seen record exactly (not stored again).
        released: earlier orphan feedback released from quarantine into this batch
            (not part of ``lines_read``).
        blank_lines: empty lines skipped (not records; not part of ``lines_read``).
        ignored_objects: objects under ``logs/`` not in the gateway layout (not read).
        watermark_path: where the updated watermark was written.

    """

    batch: int | None
    objects_read: int
    lines_read: int
    accepted_interactions: int
    accepted_feedback: int
    quarantined: int
    duplicates: int
    released: int = 0
    blank_lines: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    ignored_objects: tuple[str, ...] = ()
    watermark_path: Path | None = None

    @property
    def accepted(self) -> int:
        """Lines accepted into the batch (interactions + feedback)."""
        return self.accepted_interactions + self.accepted_feedback

    @property
    def reconciles(self) -> bool:
        """Whether ``lines_read == accepted + quarantined + duplicates``."""
        return self.lines_read == self.accepted + self.quarantined + self.duplicates


@dataclass
class _Seen:
    """Record ids already stored somewhere -> their JSON (None: quarantined, content unknown)."""

    interactions: dict[str, str | None]
    feedback: dict[str, str | None]
    quarantined_interactions: set[str]


def _seen(layout: DataLayout, open_batches: Sequence[int]) -> _Seen:
    seen = _Seen({}, {}, set())
    frames_i = [read_table(layout.interactions, INTERACTION_SCHEMA)]
    frames_f = [read_table(layout.feedback, FEEDBACK_SCHEMA)]
    for batch in open_batches:
        staged_i, staged_f = read_staged(layout, batch)
        frames_i.append(staged_i)
        frames_f.append(staged_f)
    for frame in frames_i:
        seen.interactions.update(zip(frame["id"], frame["record"], strict=True))
    for frame in frames_f:
        seen.feedback.update(zip(frame["id"], frame["record"], strict=True))
    quarantine = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    for table, ids in (("interactions", seen.interactions), ("feedback", seen.feedback)):
        rows = quarantine[(quarantine["table"] == table) & quarantine["record_id"].notna()]
        for rid in rows["record_id"]:
            # Content unknown to the dedupe (None): a re-shipped copy of a quarantined
            # record is a duplicate, not a second quarantine row.
            ids.setdefault(str(rid), None)
            if table == "interactions":
                seen.quarantined_interactions.add(str(rid))
    return seen


def _parse_line(
    text: str, kind: LogKind, where: str
) -> tuple[Interaction | FeedbackEvent | None, str, str]:
    """(record, reason code, detail); the record is None when the line is rejected."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, MALFORMED, f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(data, dict):
        return None, NOT_OBJECT, f"{where}: expected a JSON object, got {type(data).__name__}"
    version = data.get("schema_version", 1)
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return (
            None,
            UNKNOWN_VERSION,
            f"{where}: schema_version {version!r} is not one this loopwright reads "
            f"({sorted(SUPPORTED_SCHEMA_VERSIONS)})",
        )
    cls: type[Interaction] | type[FeedbackEvent] = (
        Interaction if kind == "interactions" else FeedbackEvent
    )
    try:
        return parse_record(cls, data, where), "", ""
    except RecordError as exc:
        return None, INVALID, str(exc)


def _list_new(
    store: ObjectReader, log_root_uri: str, watermark: Watermark
) -> tuple[list[LogObject], list[str]]:
    new: list[LogObject] = []
    ignored: list[str] = []
    for kind in LOG_KINDS:
        for listed in store.list(logs_prefix(log_root_uri, kind)):
            # ObjectStore lists file:// objects percent-encoded ("date%3D...") but reads
            # them by plain path: keep the plain form, which both accept.
            uri = unquote(listed) if listed.startswith("file://") else listed
            parsed = parse_log_uri(uri)
            if parsed is None or parsed.kind != kind:
                ignored.append(uri)
            elif uri not in watermark.consumed:
                new.append(parsed)
    # Interactions first, so feedback read in the same run can join them.
    new.sort(key=lambda o: (LOG_KINDS.index(o.kind), o.day, o.hour, o.segment))
    return new, ignored


class _Reader:
    """Accumulates one run: accepted rows, quarantine rows and counts."""

    def __init__(self, seen: _Seen, batch: int) -> None:
        self.seen = seen
        self.batch = batch
        self.interactions: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        self.pending: list[tuple[FeedbackEvent, str, int]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.reasons: Counter[str] = Counter()
        self.lines = self.duplicates = self.blank = 0
        self.consumed: dict[str, ConsumedObject] = {}

    def reject(
        self,
        reason: str,
        detail: str,
        raw: str,
        uri: str,
        line: int,
        table: str,
        record_id: str | None = None,
    ) -> None:
        self.reasons[reason] += 1
        self.quarantine.append(
            quarantine_row(
                stage=STAGE,
                table=table,
                batch=self.batch,
                reason=reason,
                detail=detail,
                raw=raw,
                source_object=uri,
                source_line=line,
                record_id=record_id,
            )
        )

    def read_object(self, obj: LogObject, data: bytes) -> None:
        n_lines = 0
        pieces = data.split(b"\n")
        if pieces[-1] == b"":
            pieces.pop()  # the newline that ends the last record is not a blank line
        for lineno, raw_line in enumerate(pieces, start=1):
            if not raw_line.strip():
                self.blank += 1
                continue
            n_lines += 1
            self._read_line(obj, lineno, raw_line)
        self.lines += n_lines
        self.consumed[obj.uri] = ConsumedObject(
            kind=obj.kind, lines=n_lines, sha256=hashlib.sha256(data).hexdigest(), batch=self.batch
        )

    def _read_line(self, obj: LogObject, lineno: int, raw_line: bytes) -> None:
        where = f"{obj.uri}:{lineno}"
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.reject(
                NOT_UTF8,
                f"{where}: not UTF-8 ({exc.reason})",
                raw_line.decode("utf-8", "replace"),
                obj.uri,
                lineno,
                obj.kind,
            )
            return
        record, reason, detail = _parse_line(text, obj.kind, where)
        if record is None:
            self.reject(reason, detail, text, obj.uri, lineno, obj.kind)
            return
        ids = self.seen.interactions if obj.kind == "interactions" else self.seen.feedback
        dumped = record.model_dump_json()
        if record.id in ids:
            if ids[record.id] in (None, dumped):
                self.duplicates += 1
            else:
                # Same id, other content: neither copy can be trusted over the other.
                self.reject(
                    CONFLICT,
                    f"{where}: id {record.id!r} was seen before with different content",
                    text,
                    obj.uri,
                    lineno,
                    obj.kind,
                )
            return
        ids[record.id] = dumped
        if isinstance(record, Interaction):
            self.interactions.append(interaction_row(record, obj.uri, lineno, self.batch))
        else:
            self.pending.append((record, obj.uri, lineno))

    def join_feedback(self) -> None:
        """Accept feedback on known interactions; quarantine the rest as orphans."""
        for event, uri, lineno in self.pending:
            iid = event.interaction_id
            if iid in self.seen.interactions and iid not in self.seen.quarantined_interactions:
                self.feedback.append(feedback_row(event, uri, lineno, self.batch))
                continue
            state = "is quarantined" if iid in self.seen.quarantined_interactions else "is unknown"
            self.reject(
                ORPHAN,
                f"{uri}:{lineno}: feedback {event.id} refers to interaction {iid!r}, which {state}",
                event.model_dump_json(),
                uri,
                lineno,
                "feedback",
                record_id=event.id,
            )


def ingest(
    store: ObjectReader,
    log_root_uri: str,
    out_dir: Path,
    watermark: Watermark | None = None,
) -> IngestResult:
    """Stage every log record written since the watermark as one batch.

    Args:
        store: the object store holding the gateway's logs.
        log_root_uri: the root the gateway ships under (``s3://bucket``; objects are at
            ``<root>/logs/<kind>/date=.../hour=.../<segment>.jsonl``).
        out_dir: the data folder (see :mod:`loopwright.data.tables`); created if missing.
        watermark: what has been consumed; None reads ``out_dir/watermark.json`` (or starts
            from nothing). The updated watermark is written there last, so a crash before
            it re-reads objects, whose records then count as duplicates.

    Returns:
        Counts of what was read, staged, quarantined and deduplicated. New rows join the
        open (not yet validated) batch if there is one, else a new batch.

    Raises:
        ValueError: the watermark belongs to another log root.
        loopwright.storage.StorageError: the store failed (nothing is written then).

    """
    layout = DataLayout(Path(out_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    if watermark is None:
        watermark = Watermark.load(layout.watermark) or Watermark(log_root=log_root_uri)
    if watermark.log_root.rstrip("/") != log_root_uri.rstrip("/"):
        raise ValueError(
            f"watermark {layout.watermark} is for log root {watermark.log_root!r}, "
            f"not {log_root_uri!r}; use a separate data folder per log root"
        )
    manifest = load_manifest(layout)
    open_batches = manifest.open_batches()
    staged_open = [b for b in open_batches if manifest.batches[b].state == "staged"]
    batch = staged_open[-1] if staged_open else manifest.next_number()

    new_objects, ignored = _list_new(store, log_root_uri, watermark)
    for uri in ignored:
        logger.warning("ignoring %s: not in the gateway log layout", uri)
    payloads = {obj.uri: store.get_bytes(obj.uri) for obj in new_objects}  # all I/O first
    run = _Reader(_seen(layout, open_batches), batch)
    for obj in new_objects:
        run.read_object(obj, payloads[obj.uri])
    run.join_feedback()
    released = _release_orphans(layout, run.seen, batch, run.feedback)

    has_batch = bool(run.interactions or run.feedback) or batch in manifest.batches
    result = IngestResult(
        batch=batch if has_batch else None,
        objects_read=len(new_objects),
        lines_read=run.lines,
        accepted_interactions=len(run.interactions),
        accepted_feedback=len(run.feedback) - released,
        quarantined=len(run.quarantine),
        duplicates=run.duplicates,
        released=released,
        blank_lines=run.blank,
        quarantine_reasons=dict(run.reasons),
        ignored_objects=tuple(ignored),
        watermark_path=layout.watermark,
    )
    if not new_objects and not released:
        return result  # nothing new: write nothing, so a rerun changes no file

    # Put-then-record: rows first, the watermark last.
    if has_batch:
        _stage(layout, batch, run.interactions, run.feedback)
    if run.quarantine:
        append_quarantine(layout, coerce(run.quarantine, QUARANTINE_SCHEMA))
    if released:
        _drop_released(layout, run.feedback[-released:])
    watermark.consumed.update(run.consumed)
    watermark.save(layout.watermark)
    logger.info("ingest: %s", result)
    return result


def _stage(
    layout: DataLayout,
    batch: int,
    interactions: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
) -> None:
    """Append rows to a batch's staged tables and record the batch in the manifest."""
    staged_i, staged_f = read_staged(layout, batch)
    if interactions:
        staged_i = pd.concat(
            [staged_i, coerce(interactions, INTERACTION_SCHEMA)], ignore_index=True
        )
    if feedback:
        staged_f = pd.concat([staged_f, coerce(feedback, FEEDBACK_SCHEMA)], ignore_index=True)
    write_staged(layout, batch, staged_i, staged_f)
    manifest = load_manifest(layout)
    entry = manifest.batches.setdefault(batch, BatchRecord(batch=batch))
    entry.stats.n_interactions = len(staged_i)
    entry.stats.n_feedback = len(staged_f)
    save_manifest(layout, manifest)


def _release_orphans(layout: DataLayout, seen: _Seen, batch: int, out: list[dict[str, Any]]) -> int:
    """Append quarantined orphan feedback whose interaction is now known to ``out``."""
    quarantine = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    orphans = quarantine[(quarantine["reason"] == ORPHAN) & (quarantine["table"] == "feedback")]
    released = 0
    for _, row in orphans.iterrows():
        event = FeedbackEvent.model_validate_json(str(row["raw"]))
        known = event.interaction_id in seen.interactions
        if not known or event.interaction_id in seen.quarantined_interactions:
            continue
        seen.feedback[event.id] = event.model_dump_json()
        out.append(feedback_row(event, str(row["source_object"]), int(row["source_line"]), batch))
        released += 1
    return released


def _drop_released(layout: DataLayout, released_rows: list[dict[str, Any]]) -> None:
    keys = {f"feedback:{row['id']}" for row in released_rows}
    quarantine = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    write_table(layout.quarantine, quarantine[~quarantine["key"].isin(keys)], QUARANTINE_SCHEMA)
