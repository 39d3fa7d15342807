"""The nightly flow at tiny size against the real stack: logs -> data -> reward -> candidate."""

from datetime import timedelta

import pytest
from data_sim import T0, simulate

from loopwright.data.logs import write_log_partition
from loopwright.data.tables import DataLayout
from loopwright.storage import ObjectStore

pytestmark = pytest.mark.services


def _ship(settings, traffic, when, spool):
    store = ObjectStore.from_settings(settings)
    root = f"s3://{settings.object_store.bucket}"
    return write_log_partition(
        store, root, [*traffic.interactions, *traffic.feedback], when, spool=spool
    )


def test_nightly_produces_candidate_with_lineage_and_rejects_poison(
    bootstrapped, nightly_candidate
):
    import dvc.api
    from mlflow import MlflowClient

    from flows.nightly import nightly_flow
    from loopwright.datastore import data_version
    from loopwright.nightly import BatchRejected, NightlyConfig

    settings, repo = bootstrapped.settings, bootstrapped.repo
    config = NightlyConfig(tiny=True)
    candidate = nightly_candidate
    assert candidate is not None
    client = MlflowClient()
    mv = client.get_model_version("boot-policy", candidate.version)
    assert mv.aliases == []  # a candidate never gets an alias here
    champion = client.get_model_version_by_alias("boot-policy", "champion")
    assert mv.tags["parent_version"] == champion.version
    assert mv.tags["data_version"] == data_version(repo)
    # The exact training data is readable back through DVC at that version's hash.
    sft = (repo / "data" / "curated" / "sft.jsonl").read_text()
    assert sft and dvc.api.read("data/curated/sft.jsonl", repo=str(repo)) == sft

    # Rerun with nothing new: no new data, no new version.
    versions_before = len(client.search_model_versions("name = 'boot-policy'"))
    assert nightly_flow(settings, config) is None
    assert len(client.search_model_versions("name = 'boot-policy'")) == versions_before

    # A poisoned night is stopped before training and never reaches curated data.
    _ship(
        settings,
        simulate(300, seed=2, poisoned=True, id_prefix="p2"),
        T0 + timedelta(days=1),
        "night2",
    )
    with pytest.raises(BatchRejected):
        nightly_flow(settings, config)
    assert (repo / "data" / "curated" / "sft.jsonl").read_text() == sft
    assert len(client.search_model_versions("name = 'boot-policy'")) == versions_before
    layout = DataLayout(repo / "data" / "production")
    assert layout.quarantine.is_file()


def _runs(experiment: str, run_name: str) -> int:
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return 0
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"attributes.run_name = '{run_name}'",
        output_format="list",
    )
    return len(runs)


def test_killed_during_finetune_rerun_resumes_without_redoing_or_duplicating(
    bootstrapped, nightly_candidate
):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from mlflow import MlflowClient
    from stackenv import SESSION_STACK_ENV

    from flows.nightly import nightly_flow
    from loopwright.data.batches import load_manifest
    from loopwright.datastore import data_version
    from loopwright.nightly import NightlyConfig

    settings, repo = bootstrapped.settings, bootstrapped.repo
    client = MlflowClient()
    _ship(
        settings,
        simulate(200, seed=3, id_prefix="n3"),
        T0 + timedelta(days=2),
        "night3",
    )
    policy_before = len(client.search_model_versions("name = 'boot-policy'"))

    # The night runs as a user would start it, and dies (SIGKILL) once fine-tuning began.
    env = dict(
        os.environ,
        **SESSION_STACK_ENV,
        LOOPWRIGHT_APP="boot",
        LOOPWRIGHT_DATA_REPO=str(repo),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopwright.cli", "nightly", "--tiny"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "fine-tuning a candidate" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    assert len(client.search_model_versions("name = 'boot-policy'")) == policy_before
    layout = DataLayout(repo / "data" / "production")
    batch = max(r.batch for r in load_manifest(layout).committed())
    version_at_kill = data_version(repo)
    reward_runs = _runs("boot-nightly", "reward-refresh")
    sft = (repo / "data" / "curated" / "sft.jsonl").read_text()

    # The rerun trains the candidate the dead run owed, and redoes nothing before it.
    candidate = nightly_flow(settings, NightlyConfig(tiny=True))
    assert candidate is not None
    assert client.get_model_version("boot-policy", candidate.version).tags["batch"] == str(batch)
    assert len(client.search_model_versions("name = 'boot-policy'")) == policy_before + 1
    assert _runs("boot-nightly", "reward-refresh") == reward_runs  # not retrained
    assert data_version(repo) == version_at_kill  # same data, no new snapshot
    assert (repo / "data" / "curated" / "sft.jsonl").read_text() == sft
    assert max(r.batch for r in load_manifest(layout).committed()) == batch

    # And a third run has nothing left to do.
    assert nightly_flow(settings, NightlyConfig(tiny=True)) is None
    assert len(client.search_model_versions("name = 'boot-policy'")) == policy_before + 1
