"""Publish a trained model folder: one MLflow run (params, metrics, lineage) and a version.

The bootstrap and the nightly loop both end a training stage here, so every model version
carries the same lineage tags (data version, parent version, train run, seed) whichever
path produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from loopwright.config import Settings
from loopwright.registry import ModelKind, RegisteredVersion, log_and_register

logger = logging.getLogger(__name__)


def find_version(name: str, tags: Mapping[str, str]) -> RegisteredVersion | None:
    """The newest version of ``name`` whose tags include all of ``tags``, if any.

    This is how a rerun recognises work it already published (idempotency without a
    second bookkeeping store: the registry is the record).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    conditions = " and ".join(
        [f"name = '{name}'"] + [f"tag.`{key}` = '{value}'" for key, value in tags.items()]
    )
    try:
        found = MlflowClient().search_model_versions(conditions)
    except MlflowException:
        return None
    if not found:
        return None
    best = max(found, key=lambda mv: int(mv.version))
    return RegisteredVersion(name, str(best.version), best.run_id or "", best.source or "")


def publish_model(
    settings: Settings,
    folder: Path,
    kind: ModelKind,
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    lineage: Mapping[str, str],
) -> RegisteredVersion:
    """Log a training run for ``folder`` and register it as a new ``<app>-<kind>`` version.

    Args:
        settings: gives the registered-model name.
        folder: the trained model folder.
        kind: policy, guard or reward.
        experiment: MLflow experiment to log the run in.
        run_name: run name shown in the UI.
        params: training parameters (logged as params).
        metrics: measured values (non-finite values are skipped: MLflow rejects NaN).
        lineage: version tags such as ``data_version``, ``parent_version``, ``seed``.

    Returns:
        The new version; no alias is set here (alias moves belong to the release path).
    """
    import math

    import mlflow

    name = settings.registered_model(kind)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(float(v))})
        mlflow.set_tags({f"lineage.{k}": v for k, v in lineage.items()})
        tags = dict(lineage)
        tags["published_at"] = datetime.now(UTC).isoformat()
        version = log_and_register(folder, name, kind, tags=tags)
    logger.info("published %s version %s", name, version.version)
    return version


def record_outcome(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    outcome: str,
) -> None:
    """Log a training run that published nothing (e.g. a refreshed model that lost).

    The run carries the lineage tags and ``outcome``, so a rerun of the same work finds
    it with :func:`find_outcome` instead of training again.
    """
    import math

    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(float(v))})
        mlflow.set_tags({f"lineage.{k}": v for k, v in lineage.items()})
        mlflow.set_tag("outcome", outcome)


def find_outcome(experiment: str, lineage: Mapping[str, str]) -> str | None:
    """The ``outcome`` tag of a finished run with exactly these lineage tags, if any."""
    import mlflow

    conditions = " and ".join(
        [f"tags.`lineage.{key}` = '{value}'" for key, value in lineage.items()]
        + ["tags.outcome != ''", "attributes.status = 'FINISHED'"]
    )
    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=conditions, output_format="list"
    )
    return str(runs[0].data.tags["outcome"]) if runs else None
