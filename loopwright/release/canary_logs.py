"""Read the gateway's shipped log for a canary window (both arms) from the object store."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from loopwright.records import FeedbackEvent, Interaction, RecordError, parse_record
from loopwright.storage import ObjectStore

logger = logging.getLogger(__name__)

_PARTITION = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


@dataclass
class WindowLog:
    """The records of a window; ``malformed`` counts lines that failed their contract.

    Malformed lines are not analysed (the nightly ingest quarantines them with reasons);
    they are counted here so that a canary verdict never silently rests on less data.
    """

    interactions: list[Interaction] = field(default_factory=list)
    feedback: list[FeedbackEvent] = field(default_factory=list)
    malformed: int = 0
    objects: int = 0


def _partition_start(uri: str) -> datetime | None:
    match = _PARTITION.search(uri)
    if match is None:
        return None
    return datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00")


def load_window(store: ObjectStore, root_uri: str, since: datetime) -> WindowLog:
    """All interactions and feedback in partitions that can hold records from ``since`` on.

    Args:
        store: the object store the gateway ships to.
        root_uri: ``s3://bucket`` (logs live under ``<root>/logs/<kind>/date=/hour=/``).
        since: window start (timezone-aware); whole hour partitions are read, and the
            analysis filters by timestamp.
    """
    out = WindowLog()
    first_hour = since.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    kinds: tuple[tuple[str, type[Interaction] | type[FeedbackEvent]], ...] = (
        ("interactions", Interaction),
        ("feedback", FeedbackEvent),
    )
    for kind, cls in kinds:
        for uri in store.list(f"{root_uri.rstrip('/')}/logs/{kind}/"):
            start = _partition_start(uri)
            if start is None or start < first_hour:
                continue
            out.objects += 1
            for lineno, line in enumerate(store.get_bytes(uri).decode().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = parse_record(cls, json.loads(line), f"{uri}:{lineno}")
                except (RecordError, json.JSONDecodeError) as exc:
                    logger.warning("canary window: %s", exc)
                    out.malformed += 1
                    continue
                if isinstance(record, Interaction):
                    out.interactions.append(record)
                elif isinstance(record, FeedbackEvent):
                    out.feedback.append(record)
    # A re-shipped segment may repeat records: one per id.
    out.interactions = list({r.id: r for r in out.interactions}.values())
    out.feedback = list({r.id: r for r in out.feedback}.values())
    return out
