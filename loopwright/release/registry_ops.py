"""Registry operations on MLflow model aliases: canary, promotion, rollback, audit history.

Aliases on a registered model (``<app>-policy``, ``<app>-reward``, ``<app>-guard``):
``champion`` serves, ``canary`` gets ``canary_fraction`` of the traffic (a registered-model
tag the gateway reads), ``previous`` is the last champion and the rollback target. Only
:meth:`RegistryOps.promote` and :meth:`RegistryOps.rollback` move ``champion``.

**Audit history: one MLflow run per operation** in the experiment ``<app>-registry-audit``.
Chosen over registered-model tags (``audit.<seq>``) because a run table is what the MLflow
UI is built to browse (sortable, filterable columns for who/when/why/from/to), the history
grows without cluttering the model page or hitting per-entity tag limits, and params are
immutable once logged — an entry cannot be edited in place. Each run holds tags
``audit.seq`` (zero-padded, gapless under the lock), ``audit.op``, ``audit.model``,
``audit.request_id``, ``audit.actor``, ``audit.reason``, ``audit.at`` and ``mlflow.user``,
and params ``alias.<alias> = "<from>-><to>"`` (``none`` for absent),
``tag.canary_fraction = "<from>-><to>"`` and ``vtag.<version>.<key> = <value>``.

**Writes are serialised and idempotent.** Every operation runs under a file lock in
``lock_dir`` (SQLite-backed MLflow answers concurrent writers with "database is locked" and
races in ``create_model_version``), reads the current aliases, and plans the moves from
that state, so repeating an operation that already took effect moves nothing. The audit run
is written first (status RUNNING) as a write-ahead record of the plan, then the aliases
move, then the run is marked FINISHED. A retry with the same ``request_id`` returns the
finished entry unchanged, or completes an interrupted one when the registry still matches
its plan. The lock is a local file lock: every writer must share ``lock_dir`` (one
machine); on a multi-machine cluster profile the same code needs a shared lock instead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import filelock
from mlflow import MlflowClient
from mlflow.entities import Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from loopwright.records import utcnow
from loopwright.release.approval import ApprovalDecision
from loopwright.release.strict import StrictModel

__all__ = [
    "ANY_CHAMPION",
    "CANARY",
    "CANARY_FRACTION_TAG",
    "CHAMPION",
    "PREVIOUS",
    "AliasMove",
    "ApprovalRequiredError",
    "OpResult",
    "RegistryBusyError",
    "RegistryError",
    "RegistryOps",
    "RegistryState",
    "StaleChampionError",
    "policy_model_name",
]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CANARY = "canary"
PREVIOUS = "previous"
ALIASES = (CHAMPION, CANARY, PREVIOUS)
CANARY_FRACTION_TAG = "canary_fraction"
ANY_CHAMPION = "*"
"""``expected_champion`` value meaning "promote whatever the champion is now"."""

Op = Literal["start_canary", "rollback_canary", "promote", "rollback"]
EntryStatus = Literal["done", "incomplete", "abandoned"]
_NONE = "none"
_MAX_TAG = 4900
_MAX_PARAM = 5000


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; the message says why."""


class StaleChampionError(RegistryError):
    """The champion moved since the candidate was gated against it."""


class ApprovalRequiredError(RegistryError):
    """A promotion was attempted without an approval (a rejection or a timeout)."""


class RegistryBusyError(RegistryError):
    """The registry lock could not be taken in time."""


def policy_model_name(app: str) -> str:
    """Return the registered-model name of an app's policy: ``<app>-policy``."""
    return f"{app}-policy"


class RegistryState(StrictModel):
    """The aliases of one registered model and its canary fraction."""

    model: str
    champion: str | None
    canary: str | None
    previous: str | None
    canary_fraction: str | None

    def alias(self, name: str) -> str | None:
        """Return the version an alias points to, or None."""
        return {CHAMPION: self.champion, CANARY: self.canary, PREVIOUS: self.previous}[name]


class AliasMove(StrictModel):
    """One alias (or canary-fraction) change in the audit history.

    Attributes:
        seq: position in the app's history (shared by the moves of one operation).
        alias: ``champion``, ``canary``, ``previous``, or ``canary_fraction`` (the tag).
        from_version / to_version: None when absent before / removed (for
            ``canary_fraction`` these hold the fraction).
        status: ``done``; ``incomplete`` (interrupted, not yet resumed); ``abandoned``
            (interrupted and superseded: may have been partly applied).

    """

    seq: int
    request_id: str
    op: Op
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    at: datetime
    status: EntryStatus = "done"
    audit_run_id: str


class OpResult(StrictModel):
    """What an operation did.

    ``status``: ``applied`` now, ``replayed`` (the same request id was already done),
    ``resumed`` (an interrupted request was completed) or ``noop`` (already in that state).
    """

    op: Op
    model: str
    request_id: str
    status: Literal["applied", "replayed", "resumed", "noop"]
    moves: list[AliasMove]
    message: str = ""


@dataclass
class _Plan:
    aliases: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    fraction: tuple[str | None, str | None] | None = None
    version_tags: list[tuple[str, str, str]] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.aliases and self.fraction is None

    def params(self) -> dict[str, str]:
        out = {f"alias.{a}": f"{f or _NONE}->{t or _NONE}" for a, f, t in self.aliases}
        # MLflow params are unordered; the order aliases move in matters when resuming.
        out["plan.order"] = ",".join(a for a, _, _ in self.aliases)
        if self.fraction is not None:
            out[f"tag.{CANARY_FRACTION_TAG}"] = f"{self.fraction[0] or _NONE}->" + (
                self.fraction[1] or _NONE
            )
        for version, key, value in self.version_tags:
            out[f"vtag.{version}.{key}"] = value[:_MAX_PARAM]
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> _Plan:
        plan = cls()
        order = [a for a in params.get("plan.order", "").split(",") if a]
        for alias in order:
            frm, to = _split_move(params[f"alias.{alias}"])
            plan.aliases.append((alias, frm, to))
        for key in sorted(params):
            value = params[key]
            if key == f"tag.{CANARY_FRACTION_TAG}":
                plan.fraction = _split_move(value)
            elif key.startswith("vtag."):
                version, _, tag = key.removeprefix("vtag.").partition(".")
                plan.version_tags.append((version, tag, value))
        return plan

    def consistent_with(self, state: RegistryState) -> bool:
        """Every planned change is either not yet applied or already applied."""
        ok = all(state.alias(a) in (f, t) for a, f, t in self.aliases)
        if self.fraction is not None:
            ok = ok and state.canary_fraction in self.fraction
        return ok


def _split_move(value: str) -> tuple[str | None, str | None]:
    frm, _, to = value.partition("->")
    return (None if frm == _NONE else frm, None if to == _NONE else to)


class RegistryOps:
    """Serialised, idempotent, audited alias operations for one app's registered models.

    Args:
        client: an MLflow client whose tracking and registry URIs point at the server.
        app: the app name; the audit experiment is ``<app>-registry-audit``.
        lock_dir: a run directory shared by every writer (the lock file lives there).
        lock_timeout_s: how long to wait for the lock before :class:`RegistryBusyError`.
        clock: returns the current UTC time (injectable for tests).

    """

    def __init__(
        self,
        client: MlflowClient,
        app: str,
        lock_dir: str | Path,
        *,
        lock_timeout_s: float = 120.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.app = app
        self.lock_path = Path(lock_dir) / f"registry-{app}.lock"
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self._experiment_id: str | None = None

    @property
    def audit_experiment_name(self) -> str:
        """Name of the experiment holding one audit run per alias operation."""
        return f"{self.app}-registry-audit"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry write lock (use it around any other registry write too)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.lock_path), timeout=self.lock_timeout_s)
        try:
            with lock:
                yield
        except filelock.Timeout as exc:
            raise RegistryBusyError(
                f"registry lock {self.lock_path} not free after {self.lock_timeout_s} s"
            ) from exc

    # ---- reads -------------------------------------------------------------------------

    def state(self, name: str) -> RegistryState:
        """Read the current aliases and canary fraction of registered model ``name``."""
        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            raise RegistryError(f"registered model {name!r} not found: {exc.message}") from exc
        aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        return RegistryState(
            model=name,
            champion=aliases.get(CHAMPION),
            canary=aliases.get(CANARY),
            previous=aliases.get(PREVIOUS),
            canary_fraction=(model.tags or {}).get(CANARY_FRACTION_TAG),
        )

    def history(self, name: str | None = None) -> list[AliasMove]:
        """Every recorded alias move, oldest first (for one model, or the whole app)."""
        exp_id = self._audit_experiment(create=False)
        if exp_id is None:
            return []
        flt = f"tags.`audit.model` = '{_quote(name)}'" if name else ""
        moves: list[AliasMove] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [exp_id],
                filter_string=flt,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            for run in page:
                moves.extend(_moves_of(run))
            token = page.token
            if not token:
                break
        return sorted(moves, key=lambda m: m.seq)  # stable: keeps each plan's move order

    # ---- operations --------------------------------------------------------------------

    def start_canary(
        self,
        name: str,
        version: str,
        fraction: float,
        reason: str,
        actor: str,
        *,
        request_id: str | None = None,
    ) -> OpResult:
        """Point ``canary`` at ``version`` and set the ``canary_fraction`` tag.

        Raises:
            ValueError: ``fraction`` outside (0, 1].
            RegistryError: the version does not exist or is the champion.

        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"canary fraction must be in (0, 1], got {fraction}")
        version = str(version)

        def plan(state: RegistryState) -> _Plan:
            self._require_version(name, version)
            if state.champion == version:
                raise RegistryError(
                    f"{name} version {version} is the champion; a canary must be another version"
                )
            p = _Plan()
            if state.canary != version:
                p.aliases.append((CANARY, state.canary, version))
            if state.canary_fraction != repr(float(fraction)):
                p.fraction = (state.canary_fraction, repr(float(fraction)))
            p.version_tags += [
                (version, "canary.started_at", self.clock().isoformat()),
                (version, "canary.started_by", actor),
                (version, "canary.fraction", repr(float(fraction))),
            ]
            return p

        return self._execute("start_canary", name, request_id, actor, reason, plan)

    def rollback_canary(
        self,
        name: str,
        reason: str,
        actor: str,
        *,
        version: str | None = None,
        request_id: str | None = None,
    ) -> OpResult:
        """Remove the ``canary`` alias and the fraction tag, recording why.

        With ``version``, nothing happens unless that version is the canary (a stale flow
        must not remove a newer canary).
        """

        def plan(state: RegistryState) -> _Plan:
            p = _Plan()
            if version is not None and state.canary != str(version):
                return p
            if state.canary is not None:
                p.aliases.append((CANARY, state.canary, None))
                p.version_tags += [
                    (state.canary, "canary.rolled_back_at", self.clock().isoformat()),
                    (state.canary, "canary.rolled_back_by", actor),
                    (state.canary, "canary.rolled_back_reason", reason[:_MAX_TAG]),
                ]
            if state.canary_fraction is not None:
                p.fraction = (state.canary_fraction, None)
            return p

        return self._execute("rollback_canary", name, request_id, actor, reason, plan)

    def promote(
        self,
        name: str,
        version: str,
        approval: ApprovalDecision,
        *,
        actor: str | None = None,
        expected_champion: str | None = ANY_CHAMPION,
        request_id: str | None = None,
    ) -> OpResult:
        """Make ``version`` the champion; the only path that moves ``champion`` forward.

        The old champion becomes ``previous``; the canary alias and fraction are removed.

        Args:
            name: registered model name (``<app>-policy``).
            version: the candidate version.
            approval: must be approved; a rejection or a timeout never promotes.
            actor: who promotes (default ``approval.by``).
            expected_champion: the champion the candidate was gated against (None: no
                champion yet). When the champion has moved since, the promotion is refused,
                so two candidates gated against the same champion cannot both win.
                ``ANY_CHAMPION`` skips the check.
            request_id: a stable id for retries (e.g. the flow run id).

        Raises:
            ApprovalRequiredError: ``approval.approved`` is False.
            StaleChampionError: the champion is not ``expected_champion``.
            RegistryError: the version does not exist.

        """
        if not approval.approved:
            raise ApprovalRequiredError(
                f"promotion of {name} version {version} refused: approval is "
                f"{approval.channel} by {approval.by} (approved=False): {approval.reason}"
            )
        version = str(version)
        who = actor or approval.by

        def plan(state: RegistryState) -> _Plan:
            self._require_version(name, version)
            p = _Plan()
            if state.champion == version:
                return p
            if expected_champion != ANY_CHAMPION and state.champion != expected_champion:
                raise StaleChampionError(
                    f"{name}: champion is {state.champion}, but version {version} was gated "
                    f"against {expected_champion}; re-evaluate it against the new champion"
                )
            if state.champion is not None and state.previous != state.champion:
                p.aliases.append((PREVIOUS, state.previous, state.champion))
            p.aliases.append((CHAMPION, state.champion, version))
            if state.canary is not None:
                p.aliases.append((CANARY, state.canary, None))
            if state.canary_fraction is not None:
                p.fraction = (state.canary_fraction, None)
            tags = dict(approval.to_tags())
            tags.update(
                {
                    "promoted.at": self.clock().isoformat(),
                    "promoted.by": who,
                    "promoted.from": state.champion or _NONE,
                }
            )
            p.version_tags += [(version, k, v) for k, v in tags.items()]
            return p

        return self._execute("promote", name, request_id, who, approval.reason, plan)

    def rollback(
        self,
        name: str,
        to_version: str | None = None,
        *,
        actor: str,
        reason: str,
        request_id: str | None = None,
    ) -> OpResult:
        """Move ``champion`` back to ``previous`` (or to ``to_version``), recording who/why.

        When the new champion was ``previous``, ``previous`` is removed, so a second
        rollback without ``to_version`` fails instead of flipping back to the bad version.

        Raises:
            RegistryError: no ``previous`` and no ``to_version``; the version is missing.

        """

        def plan(state: RegistryState) -> _Plan:
            target = str(to_version) if to_version is not None else state.previous
            if target is None:
                raise RegistryError(
                    f"{name} has no '{PREVIOUS}' alias to roll back to; pass to_version "
                    f"(see the history for earlier champions)"
                )
            self._require_version(name, target)
            p = _Plan()
            if state.champion == target:
                return p
            p.aliases.append((CHAMPION, state.champion, target))
            if state.previous == target:
                p.aliases.append((PREVIOUS, state.previous, None))
            if state.champion is not None:
                p.version_tags += [
                    (state.champion, "rolled_back", "true"),
                    (state.champion, "rollback.at", self.clock().isoformat()),
                    (state.champion, "rollback.by", actor),
                    (state.champion, "rollback.reason", reason[:_MAX_TAG]),
                    (state.champion, "rollback.to", target),
                ]
            return p

        return self._execute("rollback", name, request_id, actor, reason, plan)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set model-version tags under the registry lock (gate / canary verdict tags)."""
        with self.lock():
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, str(value)[:_MAX_TAG])

    def register_version(
        self,
        name: str,
        source: str,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a model version under the lock (creating the registered model if needed).

        Returns:
            The new version number, as text.

        """
        with self.lock():
            try:
                self.client.get_registered_model(name)
            except MlflowException:
                self.client.create_registered_model(name)
            mv = self.client.create_model_version(
                name, source, run_id=run_id, tags=dict(tags or {})
            )
            return str(mv.version)

    # ---- machinery ---------------------------------------------------------------------

    def _require_version(self, name: str, version: str) -> None:
        try:
            self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryError(f"{name} version {version} does not exist: {exc.message}") from exc

    def _audit_experiment(self, create: bool = True) -> str | None:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.audit_experiment_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            elif create:
                self._experiment_id = self.client.create_experiment(
                    self.audit_experiment_name,
                    tags={"loopwright.kind": "registry-audit", "loopwright.app": self.app},
                )
        return self._experiment_id

    def _runs(self, exp_id: str, flt: str) -> list[Run]:
        return list(
            self.client.search_runs(
                [exp_id], filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000
            )
        )

    def _next_seq(self, exp_id: str) -> int:
        runs = self.client.search_runs(
            [exp_id],
            run_view_type=ViewType.ALL,
            max_results=1,
            order_by=["tags.`audit.seq` DESC"],
        )
        return int(runs[0].data.tags.get("audit.seq", "0")) + 1 if runs else 1

    def _apply(self, name: str, plan: _Plan) -> None:
        for alias, _, to in plan.aliases:
            if to is None:
                try:
                    self.client.delete_registered_model_alias(name, alias)
                except MlflowException:  # already absent: the plan's end state holds
                    logger.debug("alias %s@%s already absent", name, alias)
            else:
                self.client.set_registered_model_alias(name, alias, to)
        if plan.fraction is not None:
            if plan.fraction[1] is None:
                try:
                    self.client.delete_registered_model_tag(name, CANARY_FRACTION_TAG)
                except MlflowException:
                    logger.debug("tag %s on %s already absent", CANARY_FRACTION_TAG, name)
            else:
                self.client.set_registered_model_tag(name, CANARY_FRACTION_TAG, plan.fraction[1])
        for version, key, value in plan.version_tags:
            self.client.set_model_version_tag(name, version, key, value[:_MAX_TAG])

    def _execute(
        self,
        op: Op,
        name: str,
        request_id: str | None,
        actor: str,
        reason: str,
        planner: Callable[[RegistryState], _Plan],
    ) -> OpResult:
        rid = request_id or uuid.uuid4().hex
        with self.lock():
            exp_id = self._audit_experiment()
            assert exp_id is not None
            model_flt = f"tags.`audit.model` = '{_quote(name)}'"
            mine = self._runs(exp_id, f"{model_flt} and tags.`audit.request_id` = '{_quote(rid)}'")
            other_ops = {str(r.data.tags.get("audit.op")) for r in mine} - {op}
            if other_ops:
                raise RegistryError(
                    f"request id {rid!r} was already used for {sorted(other_ops)} on {name}; "
                    f"use a distinct request id per operation"
                )
            done = [r for r in mine if r.info.status == "FINISHED"]
            if done:
                logger.info("%s %s: request %s already done; nothing moved", op, name, rid)
                return OpResult(
                    op=op,
                    model=name,
                    request_id=rid,
                    status="replayed",
                    moves=_moves_of(done[0]),
                    message="request already applied",
                )
            mine_ids = {r.info.run_id for r in mine}
            for run in self._runs(exp_id, f"{model_flt} and attributes.status = 'RUNNING'"):
                plan = _Plan.from_params(run.data.params)
                state = self.state(name)
                if run.info.run_id in mine_ids and plan.consistent_with(state):
                    self._apply(name, plan)
                    self.client.set_terminated(run.info.run_id, "FINISHED")
                    logger.warning("%s %s: resumed interrupted request %s", op, name, rid)
                    return OpResult(
                        op=op,
                        model=name,
                        request_id=rid,
                        status="resumed",
                        moves=_moves_of(self.client.get_run(run.info.run_id)),
                        message="completed an interrupted request",
                    )
                # An interrupted operation that is not being retried, or whose plan no longer
                # matches the registry: keep its entry, marked, so a partial move stays visible.
                self.client.set_tag(
                    run.info.run_id,
                    "audit.abandoned",
                    f"interrupted; superseded by request {rid} at {self.clock().isoformat()}",
                )
                self.client.set_terminated(run.info.run_id, "FAILED")

            state = self.state(name)
            plan = planner(state)
            if plan.empty():
                return OpResult(
                    op=op,
                    model=name,
                    request_id=rid,
                    status="noop",
                    moves=[],
                    message=f"nothing to move: {state.model_dump(exclude={'model'})}",
                )
            seq = self._next_seq(exp_id)
            at = self.clock().isoformat()
            run = self.client.create_run(
                exp_id,
                run_name=f"{seq:06d} {op} {name}",
                tags={
                    "audit.seq": f"{seq:09d}",
                    "audit.op": op,
                    "audit.model": name,
                    "audit.request_id": rid,
                    "audit.actor": actor,
                    "audit.reason": reason[:_MAX_TAG],
                    "audit.at": at,
                    "mlflow.user": actor,
                },
            )
            self.client.log_batch(
                run.info.run_id,
                params=[Param(k, v) for k, v in plan.params().items()],
                tags=[RunTag("mlflow.note.content", _note(op, name, plan, actor, reason))],
            )
            self._apply(name, plan)
            self.client.set_terminated(run.info.run_id, "FINISHED")
            moves = _moves_of(self.client.get_run(run.info.run_id))
            logger.info(
                "%s %s by %s: %s",
                op,
                name,
                actor,
                ", ".join(f"{m.alias} {m.from_version}->{m.to_version}" for m in moves),
            )
            return OpResult(op=op, model=name, request_id=rid, status="applied", moves=moves)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _note(op: str, name: str, plan: _Plan, actor: str, reason: str) -> str:
    moves = "; ".join(f"{a}: {f or _NONE} -> {t or _NONE}" for a, f, t in plan.aliases)
    return f"{op} on {name} by {actor}: {moves}\n\nWhy: {reason}"[:_MAX_TAG]


def _moves_of(run: Run) -> list[AliasMove]:
    tags = run.data.tags
    status: EntryStatus = "abandoned"
    if run.info.status == "FINISHED":
        status = "done"
    elif run.info.status == "RUNNING":
        status = "incomplete"
    plan = _Plan.from_params(run.data.params)
    common = {
        "seq": int(tags.get("audit.seq", "0")),
        "request_id": tags.get("audit.request_id", ""),
        "op": tags.get("audit.op"),
        "model": tags.get("audit.model", ""),
        "actor": tags.get("audit.actor", ""),
        "reason": tags.get("audit.reason", ""),
        "at": datetime.fromisoformat(tags["audit.at"]),
        "status": status,
        "audit_run_id": run.info.run_id,
    }
    moves = [AliasMove(alias=a, from_version=f, to_version=t, **common) for a, f, t in plan.aliases]
    if plan.fraction is not None:
        moves.append(
            AliasMove(
                alias=CANARY_FRACTION_TAG,
                from_version=plan.fraction[0],
                to_version=plan.fraction[1],
                **common,
            )
        )
    return moves
