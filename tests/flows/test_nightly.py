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
