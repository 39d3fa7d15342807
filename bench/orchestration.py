"""Orchestration overhead: the nightly flow through Prefect vs the same stages called directly.

One process, one local stack (object store, MLflow, Prefect server; Ray is not used by
the nightly stages) started on its own ports in a temporary run folder and stopped at
the end. A tiny v1 (policy, guard, reward) is bootstrapped once through
``examples.helpdesk.bootstrap_flow.bootstrap_flow``. Then every measured run starts from an
identical, isolated state, prepared outside the timed region:

- its own app name (``orch-r<i>``): the three v1 folders re-registered and made champion,
  so the registry's lineage lookups never see another run's versions;
- its own copy of the bootstrapped git + DVC data repository;
- its own bucket, holding the DVC remote (pre-pushed with the v1 data, as on any night
  after the first) and the same simulated night of gateway logs (300 requests);
- its own run folder (model cache, checkpoints, Data Docs).

So both arms do the same work: ingest -> validate + screen -> curate -> DVC snapshot +
push -> reward refresh -> fine-tune -> publish (a new ``<app>-policy`` version). Arms:

- ``flow``: ``flows.nightly.nightly_flow(settings, config)``, a Prefect flow run against
  the stack's Prefect server (task runs, states, logs shipped to the API);
- ``direct``: :func:`nightly_direct`, the flow's body with each task's ``.fn`` called
  instead of the task (see its docstring for why ``.fn`` and not the library calls).

One untimed warm-up pair runs first (first-call costs: torch, Great Expectations' context,
Prefect's client). Pairs then alternate the order (flow first, then direct first, ...)
so drift hits both arms alike. Figures: the median over pairs of flow / direct seconds
(``overhead_ratio``) and of flow - direct seconds; per-stage medians of the direct arm;
and ``flow_outside_task_runs_seconds``, the flow's wall time minus its task runs' time
in Running as recorded by the Prefect server, i.e. Prefect's own cost, which barely
depends on how busy the shared CPU is during training (the ratio does). Nothing asserts
on time; the issue's floor (at most 1.10) is printed as a yes/no line.
``overhead_ratio_prefect_own_only`` = (direct median + Prefect's own seconds) / direct
median: a noise-robust lower bound of the ratio.

Usage::

    PYTHONPATH=. python bench/orchestration.py [--pairs 4] [--warmup-pairs 1] [--full] [--keep]

Ports are the test stack's (tests/stackenv.py) plus ``LWBENCH_PORT_OFFSET`` (default
4000): MLflow 19050, Prefect 18200, S3 21333, SeaweedFS internals 21340+. Prints one
``name: value`` line per figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from loopwright.config import Settings
    from loopwright.nightly import NightlyConfig
    from loopwright.registry import ModelKind, RegisteredVersion
    from loopwright.stack import ServiceName

REPO = Path(__file__).resolve().parents[1]
PORT_OFFSET_ENV = "LWBENCH_PORT_OFFSET"
# tests/stackenv.py's bases; the bench adds its own offset so it never meets a test stack.
BASE_PORTS = {
    "LOOPWRIGHT_MLFLOW__PORT": 15050,
    "LOOPWRIGHT_PREFECT__PORT": 14200,
    "LOOPWRIGHT_OBJECT_STORE__S3_PORT": 17333,
    "LOOPWRIGHT_OBJECT_STORE__INTERNAL_PORT_BASE": 17340,
    "LOOPWRIGHT_RAY__PORT": 16380,
}
SERVICES: tuple[ServiceName, ...] = ("objectstore", "mlflow", "prefect")  # no Ray: unused
KINDS = ("guard", "reward", "policy")
STAGES = ("ingest", "check", "curate", "snapshot", "reward", "finetune")
T = TypeVar("T")

logger = logging.getLogger(__name__)


def stack_overrides(root: Path, offset: int) -> dict[str, str]:
    """``LOOPWRIGHT_*`` overrides: every port shifted by ``offset``, all state under ``root``."""
    env = {key: str(port + offset) for key, port in BASE_PORTS.items()}
    env["LOOPWRIGHT_RUN_DIR"] = str(root / "run")
    env["LOOPWRIGHT_MLFLOW__HOME"] = str(root / "mlflow")
    return env


@contextmanager
def running_stack(root: Path, offset: int) -> Iterator[Settings]:
    """A local stack on the bench's ports, with this process's clients pointed at it."""
    from loopwright.config import load_settings
    from loopwright.stack import Stack
    from tasks.client import client_context

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWRIGHT_")}
    env.update(stack_overrides(root, offset))
    settings = load_settings("local", env=env)
    stack = Stack(settings)
    try:
        stack.up(SERVICES)
        with client_context(settings):
            yield settings
    finally:
        stack.down()


def make_dvc_repo(path: Path) -> Path:
    """An empty git + DVC repository (as the flow tests make one)."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc) if dvc.exists() else "dvc", "init", "-q"], cwd=path, check=True)
    return path


def _timed(seconds: dict[str, float], stage: str, fn: Callable[..., T], *args: Any) -> T:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        seconds[stage] = time.perf_counter() - start


def nightly_direct(
    settings: Settings, config: NightlyConfig, seconds: dict[str, float]
) -> RegisteredVersion | None:
    """``flows.nightly.nightly_flow`` without Prefect: same stages, same order, same checks.

    Why the tasks' ``.fn`` and not the ``loopwright.nightly`` functions: the task bodies
    also resolve and download the champions, look up lineage for idempotency, publish and
    promote; calling ``.fn`` runs exactly that code, so the only difference between the
    arms is Prefect's engine (task runs, states, cache keys, API log shipping).
    Re-implementing the bodies here would measure a second copy that can drift. The
    bodies call ``prefect.get_run_logger()``, which raises outside a run unless the run
    loggers are disabled: ``prefect.logging.disable_run_logger`` is Prefect's documented
    way to call a task's function on its own (it then returns a disabled logger).

    Args:
        settings: the run's settings.
        config: the nightly knobs.
        seconds: filled with wall-clock seconds per stage (keys from ``STAGES``).

    Returns:
        The registered candidate, or None when there was nothing new to train on.
    """
    from prefect.logging import disable_run_logger

    from loopwright.nightly import BatchRejected
    from tasks.nightly import (
        check_batch,
        curate_batch,
        finetune,
        ingest_logs,
        reward_refresh,
        snapshot_data,
        untrained_batch,
    )

    with disable_run_logger():
        batch = _timed(seconds, "ingest", ingest_logs.fn, settings)
        if batch is None:
            batch = untrained_batch.fn(settings)
            if batch is None:
                return None
        else:
            check = _timed(seconds, "check", check_batch.fn, settings, batch, config)
            if not check.passed:
                raise BatchRejected(f"batch {batch} rejected before training: {check.reasons}")
        _timed(seconds, "curate", curate_batch.fn, settings, batch)
        data_version = _timed(seconds, "snapshot", snapshot_data.fn, settings)
        reward_version = _timed(
            seconds, "reward", reward_refresh.fn, settings, data_version, config
        )
        return _timed(
            seconds,
            "finetune",
            finetune.fn,
            settings,
            batch,
            data_version,
            reward_version,
            config,
        )


TASK_STAGES = {  # Prefect task name -> stage
    "ingest": "ingest",
    "validate-and-screen": "check",
    "curate": "curate",
    "snapshot-data": "snapshot",
    "reward-refresh": "reward",
    "finetune": "finetune",
}


def run_flow(
    settings: Settings, config: NightlyConfig, seconds: dict[str, float]
) -> tuple[RegisteredVersion | None, float]:
    """``nightly_flow`` as in production; also its task runs' time in Running, seconds.

    Wall time minus that is Prefect's own time (flow and task run creation, state
    proposals, result handling outside the task bodies): a figure that, unlike the
    ratio, hardly moves with how busy the shared CPU is during training.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly import nightly_flow

    state = nightly_flow(settings, config, return_state=True)
    candidate: RegisteredVersion | None = state.result()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    for run in task_runs:  # run names are "<task name>-<suffix>"
        stage = TASK_STAGES.get(run.name.rsplit("-", 1)[0])
        if stage is not None:
            seconds[stage] = run.total_run_time.total_seconds()
    return candidate, sum(run.total_run_time.total_seconds() for run in task_runs)


def warm_imports() -> None:
    """Import what the stages import lazily, so the first measured run does not pay it."""
    import great_expectations  # noqa: F401
    import trl  # noqa: F401

    import loopwright.data.contracts  # noqa: F401
    import loopwright.data.curate  # noqa: F401
    import loopwright.data.ingest  # noqa: F401
    import loopwright.data.screening  # noqa: F401
    import models.guard  # noqa: F401
    import models.policy  # noqa: F401
    import models.reward  # noqa: F401


def prepare_run(
    base: Settings,
    index: int,
    root: Path,
    repo0: Path,
    v1_folders: dict[str, Path],
    records: list[Any],
) -> Settings:
    """An isolated, identical starting state for run ``index`` (untimed); its settings."""
    from datetime import UTC, datetime

    from data_sim import T0
    from mlflow import MlflowClient
    from pydantic import SecretStr

    from loopwright.data.logs import write_log_partition
    from loopwright.datastore import data_version, snapshot
    from loopwright.publish import publish_model
    from loopwright.release.approval import ApprovalDecision
    from loopwright.release.registry_ops import RegistryOps
    from loopwright.storage import ObjectStore, load_credentials

    name = f"orch-r{index}"
    repo = root / f"repo-{index}"
    shutil.copytree(repo0, repo, symlinks=True)
    creds = load_credentials(base)
    store_update: dict[str, Any] = {"bucket": name}
    if creds is not None:  # the run folder moves, so pass the stack's credentials along
        store_update["access_key_id"] = SecretStr(creds.access_key_id)
        store_update["secret_access_key"] = SecretStr(creds.secret_access_key)
    settings = base.model_copy(
        update={
            "app": name,
            "data_repo": repo,
            "run_dir": root / f"run-{index}",
            "object_store": base.object_store.model_copy(update=store_update),
        }
    )
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket(f"s3://{name}/")
    snapshot(repo, settings, "data")  # the v1 data on this run's remote, as after night 0
    version = data_version(repo)
    assert version is not None
    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    for kind, folder in v1_folders.items():
        registered = publish_model(
            settings,
            folder,
            cast("ModelKind", kind),
            experiment=f"{name}-bootstrap",
            run_name=f"{kind}-v1",
            params={"kind": kind},
            metrics={},
            lineage={"origin": "bootstrap", "parent_version": "none", "data_version": version},
        )
        ops.promote(
            registered.name,
            registered.version,
            ApprovalDecision(
                approved=True,
                by="bench:orchestration",
                at=datetime.now(UTC),
                reason="v1 copied from the bench's bootstrap",
                channel="auto",
            ),
            expected_champion=None,
            request_id=f"bench-{registered.name}-{registered.version}",
        )
    write_log_partition(store, f"s3://{name}", records, T0, spool="night1")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="flow/direct pairs (>= 2)")
    parser.add_argument("--warmup-pairs", type=int, default=1, help="untimed pairs first")
    parser.add_argument("--full", action="store_true", help="real nightly budgets (not tiny)")
    parser.add_argument("--requests", type=int, default=300, help="simulated requests a night")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if args.pairs < 2:
        parser.error("--pairs must be at least 2")
    offset = int(os.environ.get(PORT_OFFSET_ENV, "4000"))
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "loopwright" / "data")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Keep stdout to the figures: MLflow prints a run URL per run, bars for downloads.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING)

    scratch = REPO / ".loopwright" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="orchestration-", dir=scratch))
    print(f"load_average_1m_at_start: {os.getloadavg()[0]:.2f}")
    try:
        with running_stack(root, offset) as settings:
            _bench(settings, root, args)
    finally:
        print(f"load_average_1m_at_end: {os.getloadavg()[0]:.2f}")
        if args.keep:
            print(f"scratch_folder: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _bench(settings: Settings, root: Path, args: argparse.Namespace) -> None:
    import torch
    from data_sim import simulate
    from prefect.logging import disable_run_logger

    from examples.helpdesk.bootstrap import BootstrapConfig
    from examples.helpdesk.bootstrap_flow import bootstrap_flow
    from loopwright.nightly import NightlyConfig
    from loopwright.registry import download_model_folder

    torch.set_num_threads(1)
    start = time.perf_counter()
    repo0 = make_dvc_repo(root / "repo-0")
    boot = settings.model_copy(update={"app": "orchboot", "data_repo": repo0})
    with disable_run_logger():  # keep the bench's output to its figures
        bootstrap_flow(boot, repo0, BootstrapConfig(tiny=True, scale=0.05))
    v1_folders = {
        kind: download_model_folder(f"models:/orchboot-{kind}@champion", root / "v1")
        for kind in KINDS
    }
    traffic = simulate(args.requests, seed=1, id_prefix="n1")
    records = [*traffic.interactions, *traffic.feedback]
    warm_imports()
    print(f"setup_seconds: {time.perf_counter() - start:.1f}")

    config = NightlyConfig() if args.full else NightlyConfig(tiny=True)
    print(f"nightly_config: {'full' if args.full else 'tiny'}")
    print(f"requests_per_night: {args.requests}")
    flow_times: list[float] = []
    direct_times: list[float] = []
    prefect_own: list[float] = []
    stage_times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    flow_stage_times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    index = 0
    for pair in range(-args.warmup_pairs, args.pairs):
        order = ("flow", "direct") if pair % 2 == 0 else ("direct", "flow")
        for arm in order:
            index += 1
            run_settings = prepare_run(settings, index, root, repo0, v1_folders, records)
            seconds: dict[str, float] = {}
            in_tasks = 0.0
            start = time.perf_counter()
            if arm == "flow":  # as in production: run loggers on, shipping to the API
                candidate, in_tasks = run_flow(run_settings, config, seconds)
            else:
                candidate = nightly_direct(run_settings, config, seconds)
            elapsed = time.perf_counter() - start
            if candidate is None:  # would make the timing meaningless: say so loudly
                raise RuntimeError(f"run {index} ({arm}) registered no candidate")
            if pair < 0:
                print(f"warmup_{arm}_seconds: {elapsed:.2f}")
                continue
            print(f"pair_{pair}_{arm}_seconds: {elapsed:.2f}")
            if arm == "flow":
                flow_times.append(elapsed)
                prefect_own.append(elapsed - in_tasks)
                for stage, value in seconds.items():
                    flow_stage_times[stage].append(value)
            else:
                direct_times.append(elapsed)
                for stage, value in seconds.items():
                    stage_times[stage].append(value)

    ratios = [f / d for f, d in zip(flow_times, direct_times, strict=True)]
    ratio = statistics.median(ratios)
    for stage in STAGES:
        print(f"direct_{stage}_seconds: {statistics.median(stage_times[stage]):.2f}")
        if flow_stage_times[stage]:  # the task run's time in Running, from the server
            print(f"flow_{stage}_task_seconds: {statistics.median(flow_stage_times[stage]):.2f}")
    print(f"direct_seconds: {statistics.median(direct_times):.2f}")
    print(f"flow_seconds: {statistics.median(flow_times):.2f}")
    print(f"pair_ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    diffs = [f - d for f, d in zip(flow_times, direct_times, strict=True)]
    print(f"flow_minus_direct_seconds: {statistics.median(diffs):.2f}")
    own = statistics.median(prefect_own)
    print(f"flow_outside_task_runs_seconds: {own:.2f}")
    # A lower bound that noise hardly moves: Prefect's own seconds on top of the direct
    # median (it leaves out what Prefect adds inside task runs, e.g. log shipping).
    direct = statistics.median(direct_times)
    print(f"overhead_ratio_prefect_own_only: {(direct + own) / direct:.3f}")
    print(f"overhead_ratio: {ratio:.3f}")
    print(f"overhead_floor_1.10_met: {ratio <= 1.10}")


if __name__ == "__main__":
    main()
