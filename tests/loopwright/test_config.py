from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopwright.cli import app
from loopwright.config import ConfigError, load_settings, masked_dump


def test_local_profile_defaults_to_embedded_services():
    settings = load_settings("local", env={})
    assert settings.managed_services == ["objectstore", "mlflow", "prefect", "ray"]
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5050"
    assert settings.mlflow_backend_store_uri.startswith("sqlite:///")
    assert settings.mlflow_artifacts_destination == "s3://loopwright/mlflow-artifacts"
    assert settings.registered_model("policy") == "helpdesk-policy"


def test_cluster_profile_validates_and_manages_nothing():
    settings = load_settings("cluster", env={})
    assert settings.managed_services == []
    assert settings.mlflow.backend_store_uri.startswith("postgresql://")
    assert settings.ray_address == "ray-head.internal:6379"
    assert settings.ray.num_gpus == 1
    assert settings.compute.device == "cuda"


def test_env_override_wins_over_profile():
    settings = load_settings("local", env={"LOOPWRIGHT_MLFLOW__PORT": "5999"})
    assert settings.mlflow.port == 5999
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5999"


def test_profile_chosen_by_environment():
    assert load_settings(env={"LOOPWRIGHT_PROFILE": "cluster"}).managed_services == []


def test_unknown_yaml_key_names_key_and_valid_keys(tmp_path: Path):
    profile = tmp_path / "p.yaml"
    profile.write_text("mlflow:\n  prot: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(profile, env={})
    message = str(err.value)
    assert "mlflow.prot: unknown key" in message
    assert "port" in message and "tracking_uri" in message


def test_unknown_env_variable_is_an_error_not_ignored():
    with pytest.raises(ConfigError, match="LOOPWRIGHT_MLFLOW__PROT names no setting"):
        load_settings("local", env={"LOOPWRIGHT_MLFLOW__PROT": "1"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOOPWRIGHT_MLFLOW__PORT": "70000"}, "mlflow.port: Input should be less than or equal"),
        ({"LOOPWRIGHT_COMPUTE__DEVICE": "tpu"}, "'auto', 'cpu' or 'cuda'"),
        ({"LOOPWRIGHT_OBJECT_STORE__BUCKET": "Bad_Bucket"}, "object_store.bucket"),
    ],
)
def test_bad_values_say_what_is_valid(env, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_settings("local", env=env)


def test_external_object_store_required_when_not_managed(tmp_path: Path):
    profile = tmp_path / "p.yaml"
    profile.write_text("managed_services: [mlflow]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="object_store.endpoint_url is required"):
        load_settings(profile, env={})


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: local, cluster"):
        load_settings("staging", env={})


def test_secrets_are_masked():
    settings = load_settings(
        "local", env={"LOOPWRIGHT_OBJECT_STORE__SECRET_ACCESS_KEY": "s3cr3t-value"}
    )
    dumped = masked_dump(settings)
    assert dumped["object_store"]["secret_access_key"] == "********"
    assert "s3cr3t-value" not in str(dumped)


def test_cli_config_show_masks_secrets(monkeypatch):
    monkeypatch.setenv("LOOPWRIGHT_OBJECT_STORE__SECRET_ACCESS_KEY", "s3cr3t-value")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t-value" not in result.output
    assert "secret_access_key: '********'" in result.output


def test_cli_rejects_bad_config_with_exit_2(monkeypatch):
    monkeypatch.setenv("LOOPWRIGHT_RAY__PORT", "not-a-port")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "ray.port" in result.output
