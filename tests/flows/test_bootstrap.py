"""Bootstrap end to end at tiny size against the real stack: data, DVC, three models, registry."""

import pytest

pytestmark = pytest.mark.services


def test_bootstrap_registers_three_champions_once(bootstrapped):
    from mlflow import MlflowClient

    from examples.helpdesk.bootstrap_flow import bootstrap_flow
    from loopwright.datastore import data_version
    from loopwright.release.registry_ops import RegistryOps

    first, repo, settings = bootstrapped.versions, bootstrapped.repo, bootstrapped.settings
    client = MlflowClient()
    version_on_disk = data_version(repo)
    assert version_on_disk is not None
    for kind in ("policy", "guard", "reward"):
        champion = client.get_model_version_by_alias(f"boot-{kind}", "champion")
        assert champion.version == first[kind].version
        assert champion.tags["data_version"] == version_on_disk  # lineage to data.dvc
        assert champion.tags["origin"] == "bootstrap"
        run = client.get_run(champion.run_id)
        assert "loss_first" in run.data.metrics or "initial_loss" in run.data.metrics
    guard_run = client.get_run(first["guard"].run_id)
    assert "heldout_benign_fpr" in guard_run.data.metrics
    reward_run = client.get_run(first["reward"].run_id)
    assert 0.0 <= reward_run.data.metrics["heldout_pairwise_accuracy"] <= 1.0

    # The promotion path recorded who made v1 champion and why.
    moves = RegistryOps(client, "boot", settings.run_path / "locks").history("boot-policy")
    assert [(m.alias, m.to_version, m.actor) for m in moves] == [
        ("champion", first["policy"].version, "loopwright:bootstrap")
    ]

    # Twice: nothing new is registered, the data version is unchanged.
    second = bootstrap_flow(settings, repo, bootstrapped.config)
    assert {k: v.version for k, v in second.items()} == {k: v.version for k, v in first.items()}
    for kind in ("policy", "guard", "reward"):
        assert len(client.search_model_versions(f"name = 'boot-{kind}'")) == 1
    assert data_version(repo) == version_on_disk
