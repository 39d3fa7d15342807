"""DVC adapter: snapshot the curated data folder, push it to the object store, read it back.

``data/`` is tracked as one DVC output through ``data.dvc``; its md5 there is the *data
version* recorded on every run and model version trained from it. The remote is a prefix
of the object-store bucket. Its endpoint and credentials are machine-specific, so they go
to ``.dvc/config.local`` (never committed); credentials come from the environment.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from loopwright.client_env import client_env
from loopwright.config import Settings

logger = logging.getLogger(__name__)

REMOTE_NAME = "store"


class DataStoreError(RuntimeError):
    """A DVC operation failed; the message carries DVC's own output."""


def _dvc(repo: Path, settings: Settings, *args: str) -> str:
    env = dict(os.environ)
    env.update(client_env(settings))
    env["DVC_NO_ANALYTICS"] = "1"
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run(
        [str(dvc) if dvc.exists() else "dvc", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DataStoreError(f"dvc {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def remote_url(settings: Settings) -> str:
    """Where DVC pushes data: ``s3://<bucket>/dvc``."""
    return f"s3://{settings.object_store.bucket}/dvc"


def ensure_remote(repo: Path, settings: Settings) -> None:
    """Configure the default DVC remote on the object store (local config, idempotent)."""
    _dvc(
        repo,
        settings,
        "remote",
        "add",
        "--local",
        "--force",
        "-d",
        REMOTE_NAME,
        remote_url(settings),
    )
    _dvc(
        repo,
        settings,
        "remote",
        "modify",
        "--local",
        REMOTE_NAME,
        "endpointurl",
        settings.s3_endpoint_url,
    )


def data_version(repo: Path, target: str = "data") -> str | None:
    """The md5 recorded in ``<target>.dvc``, or None if the folder was never snapshotted."""
    dvc_file = repo / f"{target}.dvc"
    if not dvc_file.is_file():
        return None
    spec = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    md5: str = spec["outs"][0]["md5"]
    return md5


def snapshot(repo: Path, settings: Settings, target: str = "data", push: bool = True) -> str:
    """``dvc add`` the folder (and push it); returns the new data version (md5).

    Re-snapshotting unchanged data returns the same version and uploads nothing.
    """
    _dvc(repo, settings, "add", target)
    if push:
        ensure_remote(repo, settings)
        _dvc(repo, settings, "push", f"{target}.dvc")
    version = data_version(repo, target)
    assert version is not None  # dvc add just wrote it
    logger.info("data snapshot %s = %s", target, version)
    return version
