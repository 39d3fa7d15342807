"""Registry operations against a real MLflow server: canary, promote, rollback, audit
history, idempotent retries, interrupted operations and concurrent promotions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from loopwright.release.approval import ApprovalDecision
from loopwright.release.registry_ops import (
    ANY_CHAMPION,
    CANARY_FRACTION_TAG,
    ApprovalRequiredError,
    RegistryError,
    RegistryOps,
    RegistryState,
    StaleChampionError,
)

pytestmark = pytest.mark.services
REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


class Echo(PythonModel):
    """The tiniest real pyfunc: returns its input."""

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        return model_input


@pytest.fixture(scope="session")
def model_source(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real pyfunc model logged once to the server: (artifact source URI, run id)."""
    path = tmp_path_factory.mktemp("echo") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=Echo(), pip_requirements=["mlflow"])
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.create_run(client.create_experiment("release-tests-train"))
    client.log_artifacts(run.info.run_id, str(path), "model")
    client.set_terminated(run.info.run_id)
    return f"{run.info.artifact_uri}/model", run.info.run_id


@pytest.fixture
def client(mlflow_server: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ops(client: MlflowClient, app: str, tmp_path: Path) -> RegistryOps:
    return RegistryOps(client, app, tmp_path / "run")


def register(
    ops: RegistryOps, model_source: tuple[str, str], count: int, name: str | None = None
) -> tuple[str, list[str]]:
    """Register the logged model ``count`` times as new versions of ``<app>-policy``."""
    name = name or f"{ops.app}-policy"
    source, run_id = model_source
    return name, [ops.register_version(name, source, run_id=run_id) for _ in range(count)]


def approved(by: str = "ann", reason: str = "evidence reviewed") -> ApprovalDecision:
    return ApprovalDecision(
        approved=True, by=by, at=datetime.now(UTC), reason=reason, channel="prefect"
    )


def moves(ops: RegistryOps, name: str) -> list[tuple[int, str, str, str | None, str | None]]:
    return [(m.seq, m.op, m.alias, m.from_version, m.to_version) for m in ops.history(name)]


def test_canary_then_promote_moves_aliases_and_records_history(
    ops: RegistryOps, model_source: tuple[str, str]
) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    first = ops.promote(name, v1, approved(reason="bootstrap"), expected_champion=None)
    assert first.status == "applied"
    assert ops.state(name) == RegistryState(
        model=name, champion=v1, canary=None, previous=None, canary_fraction=None
    )

    ops.start_canary(name, v2, 0.1, reason="gate passed", actor="nightly")
    state = ops.state(name)
    assert (state.canary, state.canary_fraction) == (v2, "0.1")
    assert ops.client.get_registered_model(name).tags[CANARY_FRACTION_TAG] == "0.1"
    assert ops.client.get_model_version_by_alias(name, "canary").version == v2

    result = ops.promote(name, v2, approved(), expected_champion=v1)
    assert result.status == "applied"
    assert ops.state(name) == RegistryState(
        model=name, champion=v2, canary=None, previous=v1, canary_fraction=None
    )
    tags = ops.client.get_model_version(name, v2).tags
    assert (tags["approval"], tags["approval.by"], tags["approval.channel"]) == (
        "approved",
        "ann",
        "prefect",
    )
    assert tags["promoted.from"] == v1

    assert moves(ops, name) == [
        (1, "promote", "champion", None, v1),
        (2, "start_canary", "canary", None, v2),
        (2, "start_canary", "canary_fraction", None, "0.1"),
        (3, "promote", "previous", None, v1),
        (3, "promote", "champion", v1, v2),
        (3, "promote", "canary", v2, None),
        (3, "promote", "canary_fraction", "0.1", None),
    ]
    last = ops.history(name)[-1]
    assert (last.actor, last.reason, last.status) == ("ann", "evidence reviewed", "done")

    # The same history is readable in the MLflow UI: one run per operation.
    exp = ops.client.get_experiment_by_name(f"{ops.app}-registry-audit")
    assert exp is not None
    runs = ops.client.search_runs([exp.experiment_id], order_by=["tags.`audit.seq` ASC"])
    assert [r.data.tags["audit.op"] for r in runs] == ["promote", "start_canary", "promote"]
    assert runs[2].data.params["alias.champion"] == f"{v1}->{v2}"
    assert runs[2].data.tags["mlflow.user"] == "ann"
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("channel", ["prefect", "mlflow", "timeout"])
def test_rejection_or_timeout_never_promotes(
    ops: RegistryOps, model_source: tuple[str, str], channel: str
) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    ops.promote(name, v1, approved())
    no = ApprovalDecision.model_validate(
        {
            "approved": False,
            "by": "bob",
            "at": datetime.now(UTC),
            "reason": "no",
            "channel": channel,
        }
    )
    with pytest.raises(ApprovalRequiredError, match="approved=False"):
        ops.promote(name, v2, no)
    assert ops.state(name).champion == v1
    assert len(ops.history(name)) == 1


def test_canary_preconditions(ops: RegistryOps, model_source: tuple[str, str]) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    ops.promote(name, v1, approved())
    with pytest.raises(RegistryError, match="is the champion"):
        ops.start_canary(name, v1, 0.1, reason="x", actor="a")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ops.start_canary(name, v2, 0.0, reason="x", actor="a")
    with pytest.raises(RegistryError, match="version 99 does not exist"):
        ops.start_canary(name, "99", 0.1, reason="x", actor="a")
    with pytest.raises(RegistryError, match="not found"):
        ops.start_canary("nope-policy", "1", 0.1, reason="x", actor="a")
    ops.start_canary(name, v2, 0.1, reason="x", actor="a")
    again = ops.start_canary(name, v2, 0.1, reason="x", actor="a")
    assert again.status == "noop"
    resized = ops.start_canary(name, v2, 0.25, reason="more traffic", actor="a")
    assert [(m.alias, m.from_version, m.to_version) for m in resized.moves] == [
        (CANARY_FRACTION_TAG, "0.1", "0.25")
    ]


def test_rollback_canary_removes_alias_and_fraction_and_records_why(
    ops: RegistryOps, model_source: tuple[str, str]
) -> None:
    name, (v1, v2, v3) = register(ops, model_source, 3)
    ops.promote(name, v1, approved())
    ops.start_canary(name, v3, 0.2, reason="gate passed", actor="nightly")
    stale = ops.rollback_canary(name, "old verdict", "nightly", version=v2)
    assert stale.status == "noop" and ops.state(name).canary == v3
    result = ops.rollback_canary(name, "error rate +12 points", "canary-analysis", version=v3)
    assert result.status == "applied"
    state = ops.state(name)
    assert (state.canary, state.canary_fraction, state.champion) == (None, None, v1)
    tags = ops.client.get_model_version(name, v3).tags
    assert tags["canary.rolled_back_reason"] == "error rate +12 points"
    entry = ops.history(name)[-1]
    assert (entry.op, entry.actor, entry.reason) == (
        "rollback_canary",
        "canary-analysis",
        "error rate +12 points",
    )
    assert ops.rollback_canary(name, "again", "x").status == "noop"


def test_rollback_to_previous_then_explicit_version(
    ops: RegistryOps, model_source: tuple[str, str]
) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    ops.promote(name, v1, approved())
    ops.promote(name, v2, approved())
    result = ops.rollback(name, actor="oncall", reason="complaints spiked")
    assert result.status == "applied"
    assert ops.state(name) == RegistryState(
        model=name, champion=v1, canary=None, previous=None, canary_fraction=None
    )
    tags = ops.client.get_model_version(name, v2).tags
    assert (tags["rolled_back"], tags["rollback.by"], tags["rollback.to"]) == ("true", "oncall", v1)
    with pytest.raises(RegistryError, match="no 'previous' alias"):
        ops.rollback(name, actor="oncall", reason="again")
    forward = ops.rollback(name, to_version=v2, actor="oncall", reason="false alarm")
    assert ops.state(name).champion == v2
    assert [(m.alias, m.from_version, m.to_version) for m in forward.moves] == [
        ("champion", v1, v2)
    ]
    assert [(m.op, m.alias, m.actor, m.reason) for m in ops.history(name)[-3:]] == [
        ("rollback", "champion", "oncall", "complaints spiked"),
        ("rollback", "previous", "oncall", "complaints spiked"),
        ("rollback", "champion", "oncall", "false alarm"),
    ]


def test_retried_promotion_moves_nothing_twice(
    ops: RegistryOps, model_source: tuple[str, str]
) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    ops.promote(name, v1, approved())
    first = ops.promote(name, v2, approved(), request_id="flow-run-42")
    retry = ops.promote(name, v2, approved(), request_id="flow-run-42")
    assert (first.status, retry.status) == ("applied", "replayed")
    assert retry.moves == first.moves
    with pytest.raises(RegistryError, match="already used for \\['promote'\\]"):
        ops.rollback(name, actor="oncall", reason="x", request_id="flow-run-42")
    # Without a request id the state check alone prevents a second move.
    assert ops.promote(name, v2, approved()).status == "noop"
    assert ops.state(name).previous == v1
    assert len({m.seq for m in ops.history(name)}) == 2


@pytest.fixture
def flaky_alias(ops: RegistryOps) -> Iterator[dict[str, int]]:
    """Fail the third alias write (the champion move of the second promotion): a crash."""
    real = ops.client.set_registered_model_alias
    calls = {"n": 0, "fail_at": 3}

    def flaky(name: str, alias: str, version: str) -> None:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise ConnectionError("server went away")
        real(name, alias, version)

    ops.client.set_registered_model_alias = flaky  # type: ignore[method-assign]
    yield calls
    ops.client.set_registered_model_alias = real  # type: ignore[method-assign]


def test_interrupted_promotion_is_completed_by_its_retry(
    ops: RegistryOps, model_source: tuple[str, str], flaky_alias: dict[str, int]
) -> None:
    name, (v1, v2) = register(ops, model_source, 2)
    ops.promote(name, v1, approved())  # one alias write: passes
    with pytest.raises(ConnectionError):
        ops.promote(name, v2, approved(), request_id="req-7")  # previous set, champion not
    half = ops.state(name)
    assert (half.champion, half.previous) == (v1, v1)
    assert {m.status for m in ops.history(name) if m.request_id == "req-7"} == {"incomplete"}

    resumed = ops.promote(name, v2, approved(), request_id="req-7")
    assert resumed.status == "resumed"
    assert ops.state(name) == RegistryState(
        model=name, champion=v2, canary=None, previous=v1, canary_fraction=None
    )
    assert [(m.alias, m.status) for m in ops.history(name) if m.request_id == "req-7"] == [
        ("previous", "done"),
        ("champion", "done"),
    ]


def test_interrupted_operation_not_retried_is_marked_abandoned(
    ops: RegistryOps, model_source: tuple[str, str], flaky_alias: dict[str, int]
) -> None:
    name, (v1, v2, v3) = register(ops, model_source, 3)
    ops.promote(name, v1, approved())
    with pytest.raises(ConnectionError):
        ops.promote(name, v2, approved(), request_id="lost")
    ops.promote(name, v3, approved(), request_id="next")  # a different request goes ahead
    state = ops.state(name)
    assert (state.champion, state.previous) == (v3, v1)
    statuses = {(m.request_id, m.status) for m in ops.history(name)}
    assert ("lost", "abandoned") in statuses and ("next", "done") in statuses


def _run_workers(
    mlflow_server: str, app: str, jobs: list[tuple[str, str, str]], lock_dir: Path
) -> list[dict[str, Any]]:
    """Run one promotion per (model, version, expected champion) in its own process, all
    released at once by a barrier file; returns each process's JSON outcome."""
    barrier = lock_dir / f"go-{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = str(HERE / "registry_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, mlflow_server, app, name, v, str(lock_dir), exp, str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, v, exp in jobs
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read() if proc.stderr else line
    barrier.touch()  # every worker promotes at once
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _run_threads(
    mlflow_server: str, app: str, jobs: list[tuple[str, str, str]], lock_dir: Path
) -> list[dict[str, Any]]:
    """Same as :func:`_run_workers` with threads: each has its own client and lock handle
    (flock locks per open file, so threads contend exactly as processes do)."""
    barrier = threading.Barrier(len(jobs))
    results: list[dict[str, Any]] = [{} for _ in jobs]

    def work(i: int, name: str, version: str, expected: str) -> None:
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        mine = RegistryOps(client, app, lock_dir)
        barrier.wait()
        try:
            mine.promote(
                name,
                version,
                approved(by=f"thread-{version}"),
                expected_champion=ANY_CHAMPION if expected == "*" else expected,
                request_id=f"thread-{name}-{version}",
            )
            results[i] = {"ok": True}
        except RegistryError as exc:
            results[i] = {"ok": False, "error": type(exc).__name__}

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def check_concurrent_promotions(
    ops: RegistryOps, model_source: tuple[str, str], mlflow_server: str, tmp_path: Path, runner: Any
) -> None:
    """Two writers promote different candidates of one model at once (A: whatever the
    champion is; B: both gated against v1), while the same happens on a second model."""
    a, (a1, a2, a3) = register(ops, model_source, 3, name=f"{ops.app}-policy")
    b, (b1, b2, b3) = register(ops, model_source, 3, name=f"{ops.app}-reward")
    ops.promote(a, a1, approved())
    ops.promote(b, b1, approved())
    jobs = [(a, a2, "*"), (a, a3, "*"), (b, b2, b1), (b, b3, b1)]
    results = runner(mlflow_server, ops.app, jobs, tmp_path / "run")
    everything = ops.history()
    assert all(m.status == "done" for m in everything)
    seqs = sorted({m.seq for m in everything})
    assert seqs == list(range(1, len(seqs) + 1))  # gapless, one entry per operation

    # A: both win, one after the other; the history and the aliases tell the same story.
    assert [r["ok"] for r in results[:2]] == [True, True]
    champs = [m for m in ops.history(a) if m.alias == "champion"]
    first, second = champs[1], champs[2]
    assert (first.from_version, second.from_version) == (a1, first.to_version)
    assert {first.to_version, second.to_version} == {a2, a3}
    state = ops.state(a)
    assert (state.champion, state.previous) == (second.to_version, first.to_version)
    prev = [m for m in ops.history(a) if m.alias == "previous"]
    assert [(m.from_version, m.to_version) for m in prev] == [(None, a1), (a1, first.to_version)]

    # B: both were gated against b1, so exactly one wins; the other must be re-evaluated.
    assert sorted(r["ok"] for r in results[2:]) == [False, True]
    loser = next(r for r in results[2:] if not r["ok"])
    assert loser["error"] == StaleChampionError.__name__
    champs_b = [m for m in ops.history(b) if m.alias == "champion"]
    assert len(champs_b) == 2
    assert (ops.state(b).champion, ops.state(b).previous) == (champs_b[1].to_version, b1)


def test_concurrent_promotions_from_threads_leave_the_registry_consistent(
    ops: RegistryOps, model_source: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    check_concurrent_promotions(ops, model_source, mlflow_server, tmp_path, _run_threads)


@pytest.mark.slow
def test_concurrent_promotions_from_processes_leave_the_registry_consistent(
    ops: RegistryOps, model_source: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    check_concurrent_promotions(ops, model_source, mlflow_server, tmp_path, _run_workers)
