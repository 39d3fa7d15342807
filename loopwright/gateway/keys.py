"""API keys: created once, stored only as salted hashes in a small SQLite file.

A key looks like ``lw_<key id>_<secret>``. The key id is public (it appears in ``keys
list`` and in logs); the secret is 32 random bytes and is shown once, at creation. We store
``sha256(store salt || secret)``: a slow password hash (scrypt) buys nothing for secrets
with 256 bits of entropy and would cost milliseconds on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

Role = Literal["user", "reviewer", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
KEY_PREFIX = "lw_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    requests_per_s REAL
);
"""


class KeyStoreError(ValueError):
    """A key operation failed (unknown key id, bad role or tenant); the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified key's identity.

    Attributes:
        key_id: public id of the key.
        tenant: the tenant whose data this key may see.
        role: user, reviewer or admin (admin implies reviewer).
        requests_per_s: per-key rate override, or None for the default.

    """

    key_id: str
    tenant: str
    role: Role
    name: str = ""
    requests_per_s: float | None = None

    def can(self, needed: Role) -> bool:
        """Whether this role may use endpoints that need ``needed``."""
        rank = {"user": 0, "reviewer": 1, "admin": 2}
        return rank[self.role] >= rank[needed]


@dataclass(frozen=True)
class KeyInfo:
    """A stored key without its secret (what ``keys list`` shows)."""

    key_id: str
    name: str
    tenant: str
    role: Role
    created_at: str
    revoked_at: str | None
    requests_per_s: float | None


def _validate_name(kind: str, value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise KeyStoreError(
            f"{kind} {value!r} is invalid: use 1-64 letters, digits, '-', '_' or '.'"
        )
    return value


class KeyStore:
    """SQLite-backed key store (thread-safe; one connection guarded by a lock).

    Args:
        path: the SQLite file; created with a fresh random salt when missing.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        row = self._conn.execute("SELECT value FROM meta WHERE name='salt'").fetchone()
        if row is None:
            self._conn.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES ('salt', ?)",
                (secrets.token_hex(16),),
            )
            self._conn.commit()
            row = self._conn.execute("SELECT value FROM meta WHERE name='salt'").fetchone()
        self._salt = bytes.fromhex(row[0])
        self.path.chmod(0o600)

    def _hash(self, secret: str) -> str:
        return hashlib.sha256(self._salt + secret.encode("utf-8")).hexdigest()

    def secret_salt(self) -> bytes:
        """A per-store secret for signing ids (derived, never the hashing salt itself)."""
        return hashlib.sha256(b"loopwright-ids:" + self._salt).digest()

    def create(
        self,
        tenant: str,
        role: str = "user",
        name: str = "",
        requests_per_s: float | None = None,
    ) -> tuple[KeyInfo, str]:
        """Create a key; returns its info and the plaintext key (shown only now).

        Raises:
            KeyStoreError: an unknown role, or a tenant/name with characters outside
                letters, digits, ``-_.``.

        """
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
        _validate_name("tenant", tenant)
        if name:
            _validate_name("name", name)
        if requests_per_s is not None and requests_per_s <= 0:
            raise KeyStoreError(f"requests_per_s must be > 0, got {requests_per_s}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self._conn.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (key_id, name, tenant, role, self._hash(secret), created, requests_per_s),
            )
            self._conn.commit()
        info = KeyInfo(key_id, name, tenant, role, created, None, requests_per_s)  # type: ignore[arg-type]
        return info, f"{KEY_PREFIX}{key_id}_{secret}"

    def verify(self, presented: str) -> Principal | None:
        """The principal of a valid, unrevoked key, else None (never raises on bad input)."""
        if not presented.startswith(KEY_PREFIX):
            return None
        parts = presented[len(KEY_PREFIX) :].split("_", 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            return None
        key_id, secret = parts
        with self._lock:
            row = self._conn.execute(
                "SELECT name, tenant, role, secret_hash, revoked_at, requests_per_s "
                "FROM keys WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        if row is None or row[4] is not None:
            return None
        if not hmac.compare_digest(row[3], self._hash(secret)):
            return None
        return Principal(
            key_id=key_id, name=row[0], tenant=row[1], role=row[2], requests_per_s=row[5]
        )

    def list(self, tenant: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
        """Keys, oldest first; only ``tenant``'s when given."""
        query = (
            "SELECT key_id, name, tenant, role, created_at, revoked_at, requests_per_s FROM keys"
        )
        clauses: list[str] = []
        args: list[str] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if not include_revoked:
            clauses.append("revoked_at IS NULL")
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, key_id", args).fetchall()
        return [KeyInfo(*row) for row in rows]

    def revoke(self, key_id: str, tenant: str | None = None) -> KeyInfo:
        """Revoke a key (idempotent); with ``tenant``, only a key of that tenant.

        Raises:
            KeyStoreError: no such key (in that tenant).

        """
        with self._lock:
            row = self._conn.execute(
                "SELECT tenant FROM keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None or (tenant is not None and row[0] != tenant):
                raise KeyStoreError(
                    f"no key with id {key_id!r}" + (f" in tenant {tenant!r}" if tenant else "")
                )
            self._conn.execute(
                "UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (datetime.now(UTC).isoformat(timespec="seconds"), key_id),
            )
            self._conn.commit()
        return next(k for k in self.list() if k.key_id == key_id)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
