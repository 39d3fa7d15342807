"""The smoke job against the real started servers: Prefect flow run, MLflow registry, Ray."""

import pytest

pytestmark = pytest.mark.services


def test_smoke_flow_runs_through_prefect_and_all_checks_pass(stack_settings):
    from prefect.client.orchestration import get_client

    from flows.smoke import smoke_flow

    state = smoke_flow(stack_settings, return_state=True)
    checks = state.result()
    assert [c.name for c in checks] == [
        "object store put/get/list",
        "mlflow registry round trip",
        "ray task",
    ]
    assert all(c.ok for c in checks), checks

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.is_completed()
    assert run.flow_id is not None


def test_registered_folder_downloads_byte_identical(stack_settings, tmp_path):
    import mlflow

    from loopwright.registry import download_model_folder, folder_digest, log_and_register

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 8}')
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 10)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run():
        version = log_and_register(folder, "test-policy", "policy", tags={"data_version": "abc"})
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias("test-policy", "champion", version.version)
    tags = client.get_model_version("test-policy", version.version).tags
    assert tags["data_version"] == "abc" and tags["kind"] == "policy"
    local = download_model_folder("models:/test-policy@champion", tmp_path / "cache")
    assert folder_digest(local) == folder_digest(folder) == tags["folder_sha256"]
    # A second resolution reuses the cached download.
    assert download_model_folder("models:/test-policy@champion", tmp_path / "cache") == local
