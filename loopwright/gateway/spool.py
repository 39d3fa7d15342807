"""Write-ahead spool for the interaction and feedback logs, shipped to the object store.

Why hand-written: the guarantee we need — every record durable on local disk before the
response leaves, shipped later to time-partitioned objects with no loss and no duplicates
across crashes — is a few dozen lines on top of ``os.fsync`` and deterministic object
names; no library in the stack offers exactly that without a broker.

Layout of a spool directory::

    spool_id                 random id of this spool, created once (part of segment ids)
    open/<segment>.jsonl     the segment being appended to (append + fsync per record)
    sealed/<segment>.jsonl   complete segments waiting to be shipped
    shipped.jsonl            manifest: one line per shipped segment (id, uri, records, bytes)

A segment id is ``<UTC start YYYYmmddTHHMMSS>-<spool_id>-<seq>``; it names exactly one
object, ``<store>/logs/<kind>/date=YYYY-MM-DD/hour=HH/<segment>.jsonl`` (partition = the
segment's start time). Shipping is put-then-record: a crash between the two re-ships the
same bytes to the same object name, which overwrites instead of duplicating. On start, an
``open`` segment left by a crash is repaired (a torn last line, never acknowledged, is cut)
and sealed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


# Characters that some line splitters treat as line ends; only legal inside JSON strings,
# where their \u escapes mean the same.
_LINE_SAFE = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class ObjectStoreLike(Protocol):
    """What the shipper needs from ``loopwright.storage.ObjectStore``."""

    def put_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` to ``uri`` (overwriting)."""
        ...


@dataclass(frozen=True)
class SpoolStats:
    """Counters of one spool since it was opened (records, not bytes)."""

    appended: int
    sealed_pending: int
    shipped_segments: int
    ship_failures: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair(path: Path) -> int:
    """Cut a torn trailing line (no newline) from a crashed segment; returns records kept."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning(
            "spool %s: cut a torn last record (%d bytes) left by a crash; it was never "
            "acknowledged to a client",
            path,
            len(data) - keep,
        )
        with path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        data = data[:keep]
    return data.count(b"\n")


def object_uri(store_uri: str, kind: str, segment_id: str) -> str:
    """The object a segment ships to (deterministic: same segment, same object).

    Args:
        store_uri: ``s3://bucket[/prefix]`` or ``file:///path``.
        kind: log name, e.g. ``interactions`` or ``feedback``.
        segment_id: ``<YYYYmmddTHHMMSS>-<spool id>-<seq>``.

    """
    stamp = datetime.strptime(segment_id[:15], "%Y%m%dT%H%M%S")
    base = store_uri.rstrip("/")
    return f"{base}/logs/{kind}/date={stamp:%Y-%m-%d}/hour={stamp:%H}/{segment_id}.jsonl"


class Spool:
    """A segmented append-only log on local disk with a background shipper.

    Thread-safe. :meth:`append` returns only after the record is fsynced, so a record a
    client saw acknowledged survives a crash of the process.

    Args:
        directory: the spool directory (created if missing).
        kind: log name used in object keys (``interactions``, ``feedback``).
        store: where sealed segments go; None keeps them local.
        store_uri: base URI for ``store``.
        max_records: seal a segment after this many records.
        max_age_s: or this many seconds after its first record.
        keep_shipped: keep local files after shipping (moved to ``shipped/``).
        clock: wall clock in seconds since the epoch (injectable for tests).

    """

    def __init__(
        self,
        directory: str | Path,
        *,
        kind: str,
        store: ObjectStoreLike | None = None,
        store_uri: str | None = None,
        max_records: int = 5_000,
        max_age_s: float = 30.0,
        keep_shipped: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (store is None) != (store_uri is None):
            raise ValueError("give both store and store_uri, or neither")
        self.directory = Path(directory)
        self.kind = kind
        self.store = store
        self.store_uri = store_uri
        self.max_records = max_records
        self.max_age_s = max_age_s
        self.keep_shipped = keep_shipped
        self._clock = clock
        self._lock = threading.Lock()
        self._ship_lock = threading.Lock()
        self._open_dir = self.directory / "open"
        self._sealed_dir = self.directory / "sealed"
        self._shipped_dir = self.directory / "shipped"
        for folder in (self._open_dir, self._sealed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._manifest = self.directory / "shipped.jsonl"
        self.spool_id = self._load_spool_id()
        self._shipped_ids = self._load_manifest()
        self._seq = self._next_seq()
        self._handle: object | None = None
        self._fd: int | None = None
        self._segment_id: str | None = None
        self._segment_records = 0
        self._segment_started = 0.0
        self.appended = 0
        self.ship_failures = 0
        self.last_ship_error: str | None = None
        self._recover()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- setup -------------------------------------------------------------------------

    def _load_spool_id(self) -> str:
        path = self.directory / "spool_id"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        spool_id = secrets.token_hex(4)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spool_id, encoding="utf-8")
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        return spool_id

    def _load_manifest(self) -> set[str]:
        shipped: set[str] = set()
        if not self._manifest.exists():
            return shipped
        for lineno, line in enumerate(self._manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                shipped.add(json.loads(line)["segment"])
            except (json.JSONDecodeError, KeyError):
                # A torn last manifest line means the segment was shipped but not recorded;
                # it will be re-shipped to the same object name (an overwrite, not a copy).
                logger.warning("%s:%d: unreadable manifest line ignored", self._manifest, lineno)
        return shipped

    def _next_seq(self) -> int:
        seen = set(self._shipped_ids)
        for folder in (self._open_dir, self._sealed_dir, self._shipped_dir):
            if folder.exists():
                seen.update(p.stem for p in folder.glob("*.jsonl"))
        seqs = [int(s.rsplit("-", 1)[1]) for s in seen if s.count("-") >= 2]
        return max(seqs, default=0) + 1

    def _recover(self) -> None:
        for path in sorted(self._open_dir.glob("*.jsonl")):
            kept = _repair(path)
            if kept == 0:
                path.unlink()
                continue
            os.replace(path, self._sealed_dir / path.name)
            logger.info("spool %s: recovered segment %s (%d records)", self.kind, path.stem, kept)
        _fsync_dir(self._open_dir)
        _fsync_dir(self._sealed_dir)
        for path in sorted(self._sealed_dir.glob("*.jsonl")):
            if path.stem in self._shipped_ids:
                # Shipped and recorded, then the process died before deleting it.
                self._retire(path)

    # -- writing -----------------------------------------------------------------------

    def _open_segment(self) -> None:
        now = self._clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        self._segment_id = f"{stamp}-{self.spool_id}-{self._seq:08d}"
        self._seq += 1
        path = self._open_dir / f"{self._segment_id}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self._open_dir)
        self._segment_records = 0
        self._segment_started = now

    def append(self, line: str) -> None:
        """Append one JSON line durably (returns after fsync).

        Raises:
            ValueError: ``line`` contains a newline (it would split into two records).
            OSError: the disk refused the write; the record is not stored.

        """
        self.append_many([line])

    def append_many(self, lines: Iterable[str]) -> None:
        """Append several JSON lines with one fsync (all or, on a crash, a prefix).

        NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR are written as JSON escapes: JSON
        allows them raw inside strings, but ``str.splitlines`` (and some JSONL readers)
        would cut a record there.
        """
        payload = []
        for line in lines:
            if "\n" in line:
                raise ValueError("a spool record must be one line")
            payload.append(line.translate(_LINE_SAFE))
        if not payload:
            return
        data = ("\n".join(payload) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self._segment_records += len(payload)
            self.appended += len(payload)
            if self._segment_records >= self.max_records:
                self._seal_locked()

    def _seal_locked(self) -> None:
        if self._fd is None or self._segment_id is None:
            return
        os.close(self._fd)
        self._fd = None
        src = self._open_dir / f"{self._segment_id}.jsonl"
        os.replace(src, self._sealed_dir / src.name)
        _fsync_dir(self._sealed_dir)
        self._segment_id = None

    def seal(self) -> None:
        """Seal the open segment now (no-op when nothing is open)."""
        with self._lock:
            self._seal_locked()

    def seal_if_due(self) -> None:
        """Seal the open segment if it is older than ``max_age_s``."""
        with self._lock:
            if self._fd is not None and self._clock() - self._segment_started >= self.max_age_s:
                self._seal_locked()

    # -- shipping ----------------------------------------------------------------------

    def pending(self) -> list[Path]:
        """Sealed segments not yet shipped, oldest first."""
        return sorted(self._sealed_dir.glob("*.jsonl"))

    def _retire(self, path: Path) -> None:
        if self.keep_shipped:
            self._shipped_dir.mkdir(exist_ok=True)
            os.replace(path, self._shipped_dir / path.name)
        else:
            path.unlink(missing_ok=True)

    def ship_once(self) -> int:
        """Seal a due segment and ship every pending one; returns segments shipped.

        Stops at the first failure (the store is down or refuses) and leaves the rest for
        the next call; never raises for store errors.
        """
        if self.store is None or self.store_uri is None:
            self.seal_if_due()
            return 0
        shipped = 0
        with self._ship_lock:
            self.seal_if_due()
            for path in self.pending():
                segment_id = path.stem
                data = path.read_bytes()
                uri = object_uri(self.store_uri, self.kind, segment_id)
                try:
                    self.store.put_bytes(uri, data)
                except Exception as exc:  # noqa: BLE001 - any store failure means retry later
                    self.ship_failures += 1
                    self.last_ship_error = f"{type(exc).__name__}: {exc}"
                    logger.warning(
                        "spool %s: shipping %s failed (%s); will retry",
                        self.kind,
                        segment_id,
                        self.last_ship_error,
                    )
                    break
                entry = {
                    "segment": segment_id,
                    "uri": uri,
                    "records": data.count(b"\n"),
                    "bytes": len(data),
                    "shipped_at": datetime.now(UTC).isoformat(),
                }
                with self._manifest.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                self._shipped_ids.add(segment_id)
                self._retire(path)
                self.last_ship_error = None
                shipped += 1
        return shipped

    def start(self, interval_s: float) -> None:
        """Ship in a background thread every ``interval_s`` seconds until :meth:`close`."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.ship_once()
                except Exception:  # noqa: BLE001 - the shipper must never die
                    logger.exception("spool %s: shipper iteration failed", self.kind)

        self._thread = threading.Thread(target=loop, name=f"spool-{self.kind}", daemon=True)
        self._thread.start()

    def close(self, ship: bool = True) -> None:
        """Stop the shipper, seal the open segment and (optionally) ship one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.seal()
        if ship:
            self.ship_once()

    def stats(self) -> SpoolStats:
        """Counters for metrics and health checks."""
        return SpoolStats(
            appended=self.appended,
            sealed_pending=len(self.pending()),
            shipped_segments=len(self._shipped_ids),
            ship_failures=self.ship_failures,
        )
