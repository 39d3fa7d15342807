"""Champion/canary routing, driven by the MLflow model registry.

The registry says what serves: alias ``champion`` and alias ``canary`` on ``<app>-policy``
and the registered-model tag ``canary_fraction`` (0..1). A poller reads them every few
seconds; when an alias moves it loads the new version off the event loop and swaps the
route table in one reference assignment. Requests that already hold the old model finish
on it; the old model is closed when the last of them returns.

Routing is sticky: a user's bucket is a hash of (tenant, user), so the same user keeps
seeing the same arm while the fraction stays the same, and raising the fraction only moves
users from champion to canary, never back and forth.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loopwright.gateway.backends import ModelBackend

logger = logging.getLogger(__name__)

Arm = Literal["champion", "canary"]
CANARY_FRACTION_TAG = "canary_fraction"


def canary_bucket(user_key: str) -> float:
    """A stable position of a user in [0, 1) (first 8 bytes of SHA-256)."""
    digest = hashlib.sha256(user_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_arm(user_key: str, canary_fraction: float, has_canary: bool) -> Arm:
    """``canary`` for users whose bucket is below the fraction (when a canary exists)."""
    if has_canary and canary_fraction > 0 and canary_bucket(user_key) < canary_fraction:
        return "canary"
    return "champion"


def parse_fraction(raw: str | None) -> float:
    """The canary fraction from a registry tag; missing or invalid means 0 (logged)."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        logger.warning("tag %s=%r is not a number; using 0", CANARY_FRACTION_TAG, raw)
        return 0.0
    if not 0.0 <= value <= 1.0:
        logger.warning("tag %s=%r is outside [0, 1]; clamped", CANARY_FRACTION_TAG, raw)
        return min(1.0, max(0.0, value))
    return value


@dataclass(eq=False)
class ServedModel:
    """A loaded model version plus the bookkeeping to retire it without dropping requests."""

    backend: ModelBackend
    name: str
    version: str
    inflight: int = 0
    retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acquire(self) -> None:
        """A request starts using this model."""
        with self._lock:
            self.inflight += 1

    def release(self) -> None:
        """A request is done with it; closes a retired model when it was the last."""
        with self._lock:
            self.inflight -= 1
            close = self.retired and self.inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        """Mark replaced; closes now if idle, else when the last request releases it."""
        with self._lock:
            self.retired = True
            close = self.inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        logger.info("closing model %s v%s (no requests left on it)", self.name, self.version)
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001 - a failing close must not break serving
            logger.exception("closing %s v%s failed", self.name, self.version)


@dataclass(frozen=True)
class RouteTable:
    """What serves now: champion, optional canary, and the canary's traffic fraction."""

    champion: ServedModel | None
    canary: ServedModel | None = None
    canary_fraction: float = 0.0


class NoModelError(RuntimeError):
    """No champion is loaded (the registry has no ``champion`` alias yet, or loading failed)."""


class Router:
    """Holds the route table; swaps it atomically and leases models to requests."""

    def __init__(self, table: RouteTable | None = None) -> None:
        self._table = table or RouteTable(champion=None)
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def table(self) -> RouteTable:
        """The current route table (an immutable snapshot)."""
        return self._table

    def swap(self, table: RouteTable) -> None:
        """Install ``table``; models no longer referenced are retired."""
        with self._swap_lock:
            old = self._table
            self._table = table
            self.swaps += 1
            keep = {id(table.champion), id(table.canary)}
            for served in (old.champion, old.canary):
                if served is not None and id(served) not in keep:
                    served.retire()

    @contextmanager
    def lease(self, user_key: str) -> Iterator[tuple[ServedModel, Arm]]:
        """The model for ``user_key`` and its arm, held until the block exits.

        Raises:
            NoModelError: nothing is loaded.

        """
        table = self._table
        arm = choose_arm(user_key, table.canary_fraction, table.canary is not None)
        served = table.canary if arm == "canary" else table.champion
        if served is None:
            raise NoModelError("no champion model is loaded")
        served.acquire()
        try:
            yield served, arm
        finally:
            served.release()


Loader = Callable[[str, str], ModelBackend]


@dataclass(frozen=True)
class RegistryState:
    """What the registry says: versions by alias (None when unset) and the fraction."""

    champion: str | None
    canary: str | None
    canary_fraction: float


def read_registry(client: object, model_name: str) -> RegistryState:
    """Read aliases ``champion``/``canary`` and tag ``canary_fraction`` of ``model_name``.

    Args:
        client: an ``mlflow.MlflowClient``.
        model_name: the registered model, ``<app>-policy``.

    Raises:
        mlflow.exceptions.MlflowException: the registry is unreachable or the model is
            not registered (missing aliases are not errors).

    """
    model = client.get_registered_model(model_name)  # type: ignore[attr-defined]
    aliases: dict[str, str] = dict(getattr(model, "aliases", {}) or {})
    tags: dict[str, str] = dict(getattr(model, "tags", {}) or {})
    return RegistryState(
        champion=aliases.get("champion"),
        canary=aliases.get("canary"),
        canary_fraction=parse_fraction(tags.get(CANARY_FRACTION_TAG)),
    )


def mlflow_loader(tracking_uri: str, cache_dir: Path, kind: str, options: object) -> Loader:
    """A loader: download ``models:/<name>/<version>`` and build a ``kind`` backend.

    Each version is downloaded once into ``cache_dir/<name>/<version>`` (never a temp dir).
    """
    from loopwright.gateway.backends import build_backend

    def load(model_name: str, version: str) -> ModelBackend:
        from loopwright.registry import download_version

        target = download_version(model_name, version, cache_dir, tracking_uri)
        return build_backend(kind, target, model_name, version, options)

    return load


def pinned_table(loader: Loader, model_name: str, version: str) -> RouteTable:
    """A route table serving exactly ``model_name`` version ``version`` on every request.

    No alias is read and nothing polls, so the table never changes while the gateway runs:
    the offline gate judges one registered version behind the controls this way without
    touching the registry's routing state.

    Raises:
        Exception: whatever the loader raises (download or load failure); a pinned gateway
            has nothing else to serve, so it does not start.

    """
    backend = loader(model_name, version)
    logger.info("serving %s v%s pinned (aliases ignored)", model_name, version)
    return RouteTable(champion=ServedModel(backend=backend, name=model_name, version=version))


class RegistryPoller:
    """Polls the registry and swaps the router's table when aliases or the fraction move.

    Loading happens in the poller thread, so serving never waits for a download; until
    the new version is loaded the old one keeps serving.

    Args:
        router: the router to update.
        client: an ``mlflow.MlflowClient``.
        model_name: ``<app>-policy``.
        loader: builds a backend for (name, version).
        interval_s: seconds between polls.

    """

    def __init__(
        self,
        router: Router,
        client: object,
        model_name: str,
        loader: Loader,
        interval_s: float = 2.0,
    ) -> None:
        self.router = router
        self.client = client
        self.model_name = model_name
        self.loader = loader
        self.interval_s = interval_s
        self.last_error: str | None = None
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    def _served(self, version: str | None, current: RouteTable) -> ServedModel | None:
        if version is None:
            return None
        for served in (current.champion, current.canary):
            if served is not None and served.version == version:
                return served
        backend = self.loader(self.model_name, version)
        logger.info("loaded %s v%s", self.model_name, version)
        return ServedModel(backend=backend, name=self.model_name, version=version)

    def poll_once(self) -> RegistryState | None:
        """One poll: read the registry, load what moved, swap.

        Returns what it read, or None when the registry could not be read (the current
        table keeps serving).
        """
        with self._poll_lock:
            self.polls += 1
            try:
                state = read_registry(self.client, self.model_name)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have
                self.last_error = f"registry read failed: {type(exc).__name__}: {exc}"
                logger.warning("%s", self.last_error)
                return None
            current = self.router.table
            same = (
                (current.champion.version if current.champion else None) == state.champion
                and (current.canary.version if current.canary else None) == state.canary
                and current.canary_fraction == state.canary_fraction
            )
            if same:
                self.last_error = None
                return state
            try:
                champion = self._served(state.champion, current)
                canary = self._served(state.canary, current)
            except Exception as exc:  # noqa: BLE001 - a broken version must not stop serving
                self.last_error = f"loading failed: {type(exc).__name__}: {exc}"
                logger.exception("loading a new version of %s failed", self.model_name)
                return state
            self.router.swap(RouteTable(champion, canary, state.canary_fraction))
            logger.info(
                "routing now: champion=%s canary=%s fraction=%.3f",
                state.champion,
                state.canary,
                state.canary_fraction,
            )
            self.last_error = None
            return state

    def start(self) -> None:
        """Poll in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.poll_once()

        self._thread = threading.Thread(target=loop, name="registry-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
