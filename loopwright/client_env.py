"""Point this process's clients (MLflow, Prefect, boto3, Ray, HF) at the configured stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def client_context(settings: Settings) -> Iterator[None]:
    """Inside the block this process's clients use ``settings``' stack; restored after.

    Prefect caches its settings when first imported (perhaps before this call), so its API
    URL is also overridden explicitly: flows then talk to this stack's server, never to an
    ephemeral one. Threads started inside must copy the context (``contextvars``) to see it.
    """
    saved = dict(os.environ)
    os.environ.update(client_env(settings))
    os.environ.pop("PREFECT_PROFILES_PATH", None)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
