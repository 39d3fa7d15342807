"""The human review queue: flagged interactions wait here for a reviewer (SQLite).

Items move ``pending -> claimed -> resolved``. Every query is scoped to one tenant, so a
reviewer never sees or touches another tenant's items (they look like missing items). A
resolved item may be marked gold: its reviewed answer becomes an evaluation reference.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

ReviewStatus = Literal["pending", "claimed", "resolved"]
ReviewLabel = Literal[
    "good", "unsafe", "wrong_fact", "hallucination", "over_refusal", "pii_leak", "other"
]
REVIEW_LABELS: tuple[str, ...] = get_args(ReviewLabel)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id INTEGER PRIMARY KEY AUTOINCREMENT,
    interaction_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL,
    reasons TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    claimed_by TEXT,
    claimed_at TEXT,
    resolved_by TEXT,
    resolved_at TEXT,
    label TEXT,
    correction TEXT,
    note TEXT,
    gold INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_tenant_status ON items(tenant, status, item_id);
"""


class ReviewError(ValueError):
    """A queue operation was refused; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReviewItem:
    """One queued interaction and its review state."""

    item_id: int
    interaction_id: str
    tenant: str
    created_at: str
    reasons: list[str]
    payload: dict[str, Any]
    status: ReviewStatus
    claimed_by: str | None
    claimed_at: str | None
    resolved_by: str | None
    resolved_at: str | None
    label: str | None
    correction: str | None
    note: str | None
    gold: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewQueue:
    """Persisted review queue (thread-safe).

    Args:
        path: SQLite file (created when missing).

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(items)")}
        if "gold" not in columns:  # a queue created before gold marks existed
            self._conn.execute("ALTER TABLE items ADD COLUMN gold INTEGER NOT NULL DEFAULT 0")
            self._conn.commit()

    @staticmethod
    def _item(row: tuple[Any, ...]) -> ReviewItem:
        return ReviewItem(
            item_id=row[0],
            interaction_id=row[1],
            tenant=row[2],
            created_at=row[3],
            reasons=json.loads(row[4]),
            payload=json.loads(row[5]),
            status=row[6],
            claimed_by=row[7],
            claimed_at=row[8],
            resolved_by=row[9],
            resolved_at=row[10],
            label=row[11],
            correction=row[12],
            note=row[13],
            gold=bool(row[14]),
        )

    def enqueue(
        self, interaction_id: str, tenant: str, reasons: list[str], payload: dict[str, Any]
    ) -> int:
        """Add an interaction (idempotent by interaction id); returns the item id."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO items(interaction_id, tenant, created_at, reasons, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                (interaction_id, tenant, _now(), json.dumps(reasons), json.dumps(payload)),
            )
            self._conn.commit()
            row = self._conn.execute(
                "SELECT item_id FROM items WHERE interaction_id = ?", (interaction_id,)
            ).fetchone()
        return int(row[0])

    def list(
        self,
        tenant: str,
        status: ReviewStatus | None = "pending",
        limit: int = 50,
        after_id: int = 0,
        reason: str | None = None,
    ) -> list[ReviewItem]:
        """Items of ``tenant`` (oldest first), optionally of one status, after ``after_id``.

        ``reason`` keeps items flagged for that reason or one under it: ``grounding``
        matches ``grounding:unsupported_figures``, ``escalate:flag`` only itself.
        """
        query = "SELECT * FROM items WHERE tenant = ? AND item_id > ?"
        args: list[Any] = [tenant, after_id]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        if reason:
            query += (
                " AND EXISTS (SELECT 1 FROM json_each(items.reasons) AS r WHERE r.value = ?"
                " OR substr(r.value, 1, length(?) + 1) = ? || ':')"
            )
            args += [reason, reason, reason]
        query += " ORDER BY item_id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._conn.execute(query, args).fetchall()
        return [self._item(r) for r in rows]

    def get(self, tenant: str, item_id: int) -> ReviewItem:
        """One item of ``tenant``.

        Raises:
            ReviewError: 404 when there is no such item in this tenant.

        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM items WHERE item_id = ? AND tenant = ?", (item_id, tenant)
            ).fetchone()
        if row is None:
            raise ReviewError(f"no review item {item_id} in your tenant", 404)
        return self._item(row)

    def claim(self, tenant: str, item_id: int, reviewer: str) -> ReviewItem:
        """Claim a pending item (re-claiming your own claim is a no-op).

        Raises:
            ReviewError: 404 no such item; 409 claimed by someone else or resolved.

        """
        with self._lock:
            cur = self._conn.execute(
                "UPDATE items SET status='claimed', claimed_by=?, claimed_at=? "
                "WHERE item_id=? AND tenant=? AND status='pending'",
                (reviewer, _now(), item_id, tenant),
            )
            self._conn.commit()
        item = self.get(tenant, item_id)
        if cur.rowcount == 0 and not (item.status == "claimed" and item.claimed_by == reviewer):
            raise ReviewError(
                f"review item {item_id} is {item.status}"
                + (f" by {item.claimed_by}" if item.claimed_by else ""),
                409,
            )
        return item

    def resolve(
        self,
        tenant: str,
        item_id: int,
        reviewer: str,
        label: str,
        correction: str | None = None,
        note: str | None = None,
        gold: bool = False,
    ) -> ReviewItem:
        """Resolve an item you claimed (pending items are claimed and resolved at once).

        ``gold`` marks the reviewed answer as a reference for evaluation.

        Raises:
            ReviewError: 422 unknown label; 404 no such item; 409 claimed by someone else
                or already resolved.

        """
        if label not in REVIEW_LABELS:
            raise ReviewError(
                f"unknown label {label!r}; valid labels: {', '.join(REVIEW_LABELS)}", 422
            )
        with self._lock:
            cur = self._conn.execute(
                "UPDATE items SET status='resolved', resolved_by=?, resolved_at=?, label=?, "
                "correction=?, note=?, gold=?, claimed_by=COALESCE(claimed_by, ?), "
                "claimed_at=COALESCE(claimed_at, ?) WHERE item_id=? AND tenant=? AND "
                "(status='pending' OR (status='claimed' AND claimed_by=?))",
                (
                    reviewer,
                    _now(),
                    label,
                    correction,
                    note,
                    int(gold),
                    reviewer,
                    _now(),
                    item_id,
                    tenant,
                    reviewer,
                ),
            )
            self._conn.commit()
        item = self.get(tenant, item_id)
        if cur.rowcount == 0:
            raise ReviewError(
                f"review item {item_id} is {item.status}"
                + (f" by {item.claimed_by}" if item.claimed_by else ""),
                409,
            )
        return item

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Item counts by status (all tenants when None)."""
        query = "SELECT status, COUNT(*) FROM items"
        args: list[Any] = []
        if tenant is not None:
            query += " WHERE tenant = ?"
            args.append(tenant)
        with self._lock:
            rows = self._conn.execute(query + " GROUP BY status", args).fetchall()
        return {status: int(n) for status, n in rows}

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
