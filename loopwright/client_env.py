"""Point this process's clients (MLflow, Prefect, boto3, Ray, HF) at the configured stack."""

from __future__ import annotations

import os

from loopwright.config import Settings
from loopwright.storage import load_credentials


def client_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make every client library use ``settings``.

    Offline by construction: Hugging Face hub access is switched off, and telemetry of
    MLflow, Prefect and Ray is disabled.
    """
    env = {
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_HOME": str(settings.run_path / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_ADDRESS": settings.ray_address,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(settings.run_path / "hf"),
        "MPLCONFIGDIR": str(settings.run_path / "mpl"),
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "AWS_DEFAULT_REGION": settings.object_store.region,
        "AWS_ENDPOINT_URL_S3": settings.s3_endpoint_url,
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url,
    }
    if "ray" in settings.managed_services:
        # A local head lives on loopback; without this Ray rewrites 127.0.0.1 to the
        # machine's network address.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    creds = load_credentials(settings)
    if creds is not None:
        env["AWS_ACCESS_KEY_ID"] = creds.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = creds.secret_access_key
    return env


def apply_client_env(settings: Settings) -> None:
    """Export :func:`client_env` into ``os.environ`` (call once, before using the clients)."""
    os.environ.update(client_env(settings))
