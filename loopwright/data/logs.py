"""The gateway's log layout on the object store, and a writer for it.

The gateway ships each spool segment to exactly one object::

    <root>/logs/<kind>/date=YYYY-MM-DD/hour=HH/<segment-id>.jsonl

with ``kind`` one of :data:`LOG_KINDS` and one record per line (``interactions``:
:class:`~loopwright.records.Interaction`; ``feedback``:
:class:`~loopwright.records.FeedbackEvent`). A segment id starts with its UTC start time
(``YYYYmmddTHHMMSS-<spool>-<seq>``), which also picks the partition. Re-shipping a
segment overwrites the same object, so an object name identifies its content.

:func:`write_log_partition` writes records in that layout; tests, the demo and the load
simulator use it to stand in for the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal, Protocol

from loopwright.records import FeedbackEvent, Interaction, to_json_line

LogKind = Literal["interactions", "feedback"]
LOG_KINDS: tuple[LogKind, ...] = ("interactions", "feedback")

_OBJECT_RE = re.compile(
    r"/logs/(?P<kind>[a-z_]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<segment>[^/]+)\.jsonl$"
)


class ObjectWriter(Protocol):
    """What :func:`write_log_partition` needs from :class:`loopwright.storage.ObjectStore`."""

    def put_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` at ``uri`` (overwriting)."""
        ...


@dataclass(frozen=True)
class LogObject:
    """One shipped log segment, parsed from its URI.

    Attributes:
        uri: full object URI.
        kind: ``interactions`` or ``feedback``.
        day: partition date (UTC).
        hour: partition hour, 0..23 (UTC).
        segment: segment id (file name without ``.jsonl``).

    """

    uri: str
    kind: LogKind
    day: date
    hour: int
    segment: str


def logs_prefix(log_root_uri: str, kind: LogKind) -> str:
    """``<root>/logs/<kind>/``: the prefix every object of one log kind lives under."""
    if kind not in LOG_KINDS:
        raise ValueError(f"unknown log kind {kind!r}; valid: {list(LOG_KINDS)}")
    return f"{log_root_uri.rstrip('/')}/logs/{kind}/"


def segment_uri(log_root_uri: str, kind: LogKind, segment_id: str, when: datetime) -> str:
    """The object a segment ships to (partition from ``when``, in UTC).

    Raises:
        ValueError: unknown kind, naive ``when``, or a segment id with ``/`` in it.

    """
    if when.tzinfo is None:
        raise ValueError(f"partition time must be timezone-aware (UTC), got naive {when!r}")
    if "/" in segment_id or not segment_id:
        raise ValueError(f"segment id must be a non-empty name without '/', got {segment_id!r}")
    when = when.astimezone(UTC)
    return (
        f"{logs_prefix(log_root_uri, kind)}date={when:%Y-%m-%d}/hour={when:%H}/{segment_id}.jsonl"
    )


def parse_log_uri(uri: str) -> LogObject | None:
    """Parse a log object URI; None when it is not in the gateway layout (e.g. a stray file)."""
    match = _OBJECT_RE.search(uri)
    if match is None or match["kind"] not in LOG_KINDS:
        return None
    hour = int(match["hour"])
    if hour > 23:
        return None
    try:
        day = date.fromisoformat(match["date"])
    except ValueError:
        return None
    return LogObject(uri, match["kind"], day, hour, match["segment"])


def write_log_partition(
    store: ObjectWriter,
    root: str,
    records: Sequence[Interaction | FeedbackEvent],
    when: datetime,
    *,
    spool: str = "sim",
    seq: int = 0,
) -> list[str]:
    """Write records as the gateway would ship them: one JSONL segment object per kind.

    Interactions go to ``logs/interactions/...``, feedback events to ``logs/feedback/...``,
    both in the partition of ``when``. The segment id is
    ``<when YYYYmmddTHHMMSS>-<spool>-<seq:06d>``, so writing the same records with the
    same arguments again overwrites the same objects (a re-ship).

    Args:
        store: the object store (``put_bytes``).
        root: log root URI, e.g. ``s3://bucket`` (objects go under ``<root>/logs/``).
        records: interactions and/or feedback events, written in the given order.
        when: segment start time (timezone-aware); picks the partition.
        spool: spool id part of the segment id.
        seq: sequence number part of the segment id.

    Returns:
        The URIs written, interactions first (kinds with no records are not written).

    Raises:
        TypeError: a record is neither an Interaction nor a FeedbackEvent.
        ValueError: bad ``when`` or segment parts.

    """
    by_kind: dict[LogKind, list[str]] = {"interactions": [], "feedback": []}
    for record in records:
        if isinstance(record, Interaction):
            by_kind["interactions"].append(to_json_line(record))
        elif isinstance(record, FeedbackEvent):
            by_kind["feedback"].append(to_json_line(record))
        else:
            raise TypeError(
                f"write_log_partition takes Interaction or FeedbackEvent, got {type(record)!r}"
            )
    if when.tzinfo is None:
        raise ValueError(f"partition time must be timezone-aware (UTC), got naive {when!r}")
    segment = f"{when.astimezone(UTC):%Y%m%dT%H%M%S}-{spool}-{seq:06d}"
    uris: list[str] = []
    for kind in LOG_KINDS:
        lines = by_kind[kind]
        if not lines:
            continue
        uri = segment_uri(root, kind, segment, when)
        store.put_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))
        uris.append(uri)
    return uris
