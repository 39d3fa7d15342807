"""Thin MLflow adapter for model folders: log, register, resolve and download.

Every learnable part (policy, guard, reward) is a plain folder (a Hugging Face model
directory plus its own config files). It is logged as an MLflow pyfunc "model from code"
whose only artifact is that folder, so the MLflow UI shows a normal model and any
consumer gets back exactly the folder it would load from disk. Alias moves belong to
``loopwright.release``; this module never moves ``champion``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

ModelKind = Literal["policy", "guard", "reward"]
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
FOLDER_ARTIFACT = "model_dir"
# An adapter version's folder names the registered version it adapts (models.lora).
BASE_REFERENCE_FILE = "base_model.json"
# Pinned so MLflow does not infer requirements (that alone costs ~7 s per log).
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers>=5.24,<6", "onnxruntime>=1.20"]


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry."""

    name: str
    version: str
    run_id: str
    source: str


def folder_digest(folder: Path) -> str:
    """SHA-256 over relative paths and contents of every file: the folder's identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def log_and_register(
    folder: Path,
    name: str,
    kind: ModelKind,
    tags: Mapping[str, str] | None = None,
) -> RegisteredVersion:
    """Log ``folder`` as a model in the active MLflow run and register a new version.

    Args:
        folder: the model directory to publish (loaded later through the generic path).
        name: registered-model name, e.g. ``helpdesk-policy``.
        kind: which learnable part this is (recorded so consumers know how to load it).
        tags: version tags (lineage: data version, parent version, train run...).

    Returns:
        The new version. The caller's run must be active (``mlflow.start_run``).

    """
    import mlflow
    from mlflow import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run (mlflow.start_run)")
    digest = folder_digest(folder)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={FOLDER_ARTIFACT: str(folder)},
        model_config={"kind": kind},
        pip_requirements=PIP_REQUIREMENTS,
    )
    version = mlflow.register_model(info.model_uri, name)
    client = MlflowClient()
    all_tags = {"kind": kind, "folder_sha256": digest, "train_run": run.info.run_id}
    all_tags.update(tags or {})
    for key, value in all_tags.items():
        client.set_model_version_tag(name, version.version, key, str(value))
    logger.info("registered %s version %s (run %s)", name, version.version, run.info.run_id)
    return RegisteredVersion(name, str(version.version), run.info.run_id, info.model_uri)


def resolve_version(uri: str) -> RegisteredVersion:
    """Resolve ``models:/name@alias`` or ``models:/name/version`` to a concrete version."""
    from mlflow import MlflowClient

    if not uri.startswith("models:/"):
        raise ValueError(f"not a registry URI (models:/name@alias or models:/name/N): {uri}")
    ref = uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = ref.partition("/")
        if not number.isdigit():
            raise ValueError(f"{uri}: expected models:/name@alias or models:/name/<number>")
        mv = client.get_model_version(name, number)
    return RegisteredVersion(name, str(mv.version), mv.run_id or "", mv.source or "")


def download_model_folder(uri: str, cache_root: Path) -> Path:
    """The local model folder for a registry URI or a plain path.

    Registry versions are immutable, so each is downloaded once into
    ``cache_root/<name>/<version>`` and reused (MLflow's own loader leaves an undeleted
    temp copy per call, see STACK_NOTES).

    Args:
        uri: ``models:/name@alias``, ``models:/name/N``, or a local folder path.
        cache_root: where downloaded versions are kept.

    Returns:
        The folder holding the model files (config, weights, tokenizer).

    """
    if not uri.startswith("models:/"):
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        return path
    version = resolve_version(uri)
    target = download_version(version.name, version.version, cache_root)
    return _folder_in_download(target, uri)


def download_version(
    name: str, version: str, cache_root: Path, tracking_uri: str | None = None
) -> Path:
    """Download ``models:/<name>/<version>`` once into ``cache_root/<name>/<version>``.

    The one download path of registered versions (the loop's stages, the gateway's
    router and its guard): staged beside the target and renamed, so a crash never leaves a
    half folder that a later call would take for a complete version; a marker file says
    the download finished.

    Args:
        name: registered model name.
        version: version number.
        cache_root: where downloaded versions are kept (versions are immutable).
        tracking_uri: the MLflow server (None: the process's configured one).

    An adapter version (a LoRA fine-tune's folder with a :data:`BASE_REFERENCE_FILE`) is
    merged onto its base version here, once, so every consumer loads a plain model folder;
    the adapter's own files stay beside it under ``adapter/``.

    Returns:
        The downloaded root (the logged model as MLflow stores it).
    """
    import mlflow

    target = cache_root / name / str(version)
    done = target / ".complete"
    if not done.exists():
        staging = target.with_name(f"{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(staging),
            tracking_uri=tracking_uri,
        )
        _merge_adapter_in_place(
            _folder_in_download(staging, f"models:/{name}/{version}"), cache_root, tracking_uri
        )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        done.touch()
    return target


def _folder_in_download(target: Path, uri: str) -> Path:
    """Locate the logged folder inside a downloaded pyfunc model (its MLmodel says where)."""
    import yaml

    mlmodel = next(iter(target.rglob("MLmodel")), None)
    if mlmodel is None:
        raise FileNotFoundError(f"{uri}: downloaded version has no MLmodel file")
    spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    entry = artifacts.get(FOLDER_ARTIFACT)
    if not entry:
        raise FileNotFoundError(f"{uri}: version has no {FOLDER_ARTIFACT} artifact")
    return mlmodel.parent / entry["path"]


def write_base_reference(adapter_dir: Path, name: str, version: str) -> None:
    """Record in an adapter folder which registered version it adapts (before logging it)."""
    (Path(adapter_dir) / BASE_REFERENCE_FILE).write_text(
        json.dumps({"name": name, "version": str(version)}), encoding="utf-8"
    )


def _merge_adapter_in_place(folder: Path, cache_root: Path, tracking_uri: str | None) -> None:
    """Replace a downloaded adapter folder by its merge onto the base version it names.

    Not an adapter: nothing happens. The base is downloaded (and, if itself an adapter,
    merged) through :func:`download_version`, so chains of adapter versions resolve.
    """
    from models.lora import is_adapter_folder, merge_adapter_folder

    if not is_adapter_folder(folder):
        return
    reference = folder / BASE_REFERENCE_FILE
    if not reference.is_file():
        raise FileNotFoundError(
            f"{folder}: an adapter without {BASE_REFERENCE_FILE}; register adapters with the "
            "registered version they adapt (loopwright.registry.write_base_reference)"
        )
    base = json.loads(reference.read_text(encoding="utf-8"))
    base_root = download_version(base["name"], base["version"], cache_root, tracking_uri)
    base_dir = _folder_in_download(base_root, f"models:/{base['name']}/{base['version']}")
    adapter = folder.parent / "adapter"
    folder.rename(adapter)
    merge_adapter_folder(base_dir, adapter, folder)
    logger.info("merged adapter onto %s v%s", base["name"], base["version"])
