"""Evaluate a candidate against the champion and turn the result into the gate's summary."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwright.config import Settings
from loopwright.release.summary import VIEWS, View

if TYPE_CHECKING:
    from loopwright.evaluation.api import EvalResult

logger = logging.getLogger(__name__)


def _as_baseline(result: EvalResult, baseline_uri: str) -> EvalResult | None:
    """The baseline's side of a paired result, shaped as a result of its own (or None)."""
    if result.baseline_metrics is None:
        return None
    return dataclasses.replace(
        result,
        model_uri=baseline_uri,
        baseline_uri=None,
        metrics=result.baseline_metrics,
        comparison=None,
        report=result.baseline_report or result.report,
    )


def _summary(
    raw: EvalResult | None, gateway: EvalResult | None, model_uri: str, baseline_uri: str | None
) -> dict[str, Any]:
    """The gate's summary holding the views that were evaluated (at least one)."""
    from loopwright.evaluation.api import gate_summary

    if raw is not None:
        out = gate_summary(raw, gateway)
    else:  # gateway only: build it as the raw view, then file it under its own name
        assert gateway is not None
        out = gate_summary(gateway)
        out["views"] = {"gateway": out["views"]["raw"]}
    # The gateway view's results name the endpoint; the summary names registry versions.
    return {**out, "model_uri": model_uri, "baseline_uri": baseline_uri}


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
    views: Sequence[View] = ("raw", "gateway"),
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run the evaluation engine on the same samples for both models; return the summaries.

    ``raw`` evaluates the model folders. ``gateway`` serves each version pinned behind the
    full control stack (:func:`loopwright.release.gateway_view.pinned_gateways`; no alias
    is read or moved) and evaluates the endpoints on the same samples, paired. Generations
    are cached and checkpointed under ``run_dir`` (the gateway view under
    ``run_dir/gateway``), so a rerun after a crash only generates what is missing.
    Everything is logged to MLflow; the gateway view's interaction log stays local, under
    ``run_dir/gateway/interaction-log``.

    Args:
        settings: main config (registry, Ray, the production gateway settings).
        candidate_uri: ``models:/<app>-policy/<version>`` (the gateway view needs a version;
            the raw view takes any form :func:`loopwright.evaluation.api.evaluate` does).
        baseline_uri: the champion in the same form, or None (first run: no pairing).
        suite_dir: folder of suite YAML files.
        data_root: folder the suites' sample paths are relative to.
        run_dir: this evaluation's folder.
        suites: suite names (default all whose resources are available).
        workers: Ray generation workers for the raw view.
        views: which views to produce, a non-empty subset of ``("raw", "gateway")``.

    Returns:
        ``(candidate, champion)`` summaries in the shape
        :func:`loopwright.release.summary.load_summary` reads, with ``views`` holding the
        requested views; the champion's is None without a baseline (the gate's first-run
        path).

    Raises:
        ValueError: ``views`` is empty or names an unknown view.
        GatewayViewError: the gateway view cannot serve a version.

    """
    from loopwright.evaluation.api import evaluate
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.resources import load_resources

    wanted = list(dict.fromkeys(views))
    unknown = [v for v in wanted if v not in VIEWS]
    if not wanted or unknown:
        raise ValueError(f"views must be a non-empty subset of {list(VIEWS)}; got {list(views)}")
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
    common: dict[str, Any] = {
        "suite_dir": suite_dir,
        "data_root": data_root,
        "cache_dir": settings.run_path / "eval-cache",
        "engine": engine,
        "resources": resources,
        "mlflow_tracking_uri": settings.mlflow_tracking_uri,
        "mlflow_experiment": f"{settings.app}-eval",
        "skip_unavailable": True,
    }
    raw = gateway = None
    if "raw" in wanted:
        started = time.perf_counter()
        raw = evaluate(candidate_uri, suites or "all", baseline_uri, run_dir=run_dir, **common)
        logger.info("raw view took %.1f s", time.perf_counter() - started)
    if "gateway" in wanted:
        from loopwright.release.gateway_view import parse_version, pinned_gateways

        name = settings.registered_model("policy")
        cand_v = parse_version(candidate_uri, name)
        base_v = parse_version(baseline_uri, name) if baseline_uri is not None else None
        gw_dir = run_dir / "gateway"
        started = time.perf_counter()
        versions = [cand_v] if base_v is None else [cand_v, base_v]
        with pinned_gateways(settings, versions, log_dir=gw_dir / "interaction-log") as served:
            gateway = evaluate(
                served[cand_v],
                suites or "all",
                served[base_v] if base_v is not None else None,
                run_dir=gw_dir,
                **common,
            )
        logger.info("gateway view took %.1f s", time.perf_counter() - started)
    candidate = _summary(raw, gateway, candidate_uri, baseline_uri)
    if baseline_uri is None:
        return candidate, None
    base_raw = _as_baseline(raw, baseline_uri) if raw is not None else None
    base_gw = _as_baseline(gateway, baseline_uri) if gateway is not None else None
    if base_raw is None and base_gw is None:
        return candidate, None
    return candidate, _summary(base_raw, base_gw, baseline_uri, None)
