"""Evaluate a candidate against the champion and turn the result into the gate's summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from loopwright.config import Settings


def evaluate_for_gate(
    settings: Settings,
    candidate_uri: str,
    baseline_uri: str | None,
    *,
    suite_dir: Path,
    data_root: Path,
    run_dir: Path,
    suites: list[str] | None = None,
    workers: int = 1,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run the evaluation engine on the same samples for both models; return the summary.

    Generations are cached and checkpointed under ``run_dir``, so a rerun after a crash
    only generates what is missing. Everything is logged to MLflow.

    Returns:
        ``(candidate, champion)`` summaries in the shape
        :func:`loopwright.release.summary.load_summary` reads (the ``raw`` view); the
        champion's is None without a baseline (the gate's first-run path).
    """
    from loopwright.evaluation.api import evaluate, gate_summary
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.resources import load_resources

    cache = settings.run_path / "model-cache"
    resources = load_resources(
        reward=f"models:/{settings.registered_model('reward')}@champion",
        guard=f"models:/{settings.registered_model('guard')}@champion",
        download_root=cache,
    )
    engine = EngineConfig(
        executor="ray",
        workers=workers,
        ray_address=settings.ray_address,
    )
    result = evaluate(
        candidate_uri,
        suites or "all",
        baseline_uri,
        suite_dir=suite_dir,
        data_root=data_root,
        run_dir=run_dir,
        cache_dir=settings.run_path / "eval-cache",
        engine=engine,
        resources=resources,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        mlflow_experiment=f"{settings.app}-eval",
        skip_unavailable=True,
    )
    candidate = gate_summary(result)
    if baseline_uri is None or result.baseline_metrics is None:
        return candidate, None
    as_baseline = dataclasses.replace(
        result,
        model_uri=baseline_uri,
        baseline_uri=None,
        metrics=result.baseline_metrics,
        comparison=None,
    )
    return candidate, gate_summary(as_baseline)
