"""Evaluate a candidate against the champion and turn the result into the gate's summary."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwright.config import Settings
from loopwright.release.gate import GatePolicy, decide, load_gate_policy
from loopwright.release.summary import EvalSummary, Look, View

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


def _suite_dimensions(*results: EvalResult | None) -> dict[str, str]:
    return {m.suite: m.dimension for r in results if r is not None for m in r.metrics}


def next_fractions(
    fractions: Mapping[str, float],
    suite_dimensions: Mapping[str, str],
    inconclusive_keys: set[str],
    next_share: float,
) -> dict[str, float]:
    """Raise the share of every suite of an inconclusive key's dimension to ``next_share``.

    Pure. A key is ``dimension`` or ``dimension/slice``; every suite of that dimension gets
    more samples (a slice lives inside its dimension's suites). Other suites keep theirs.
    """
    dims = {key.split("/", 1)[0] for key in inconclusive_keys}
    return {
        suite: max(share, next_share) if suite_dimensions.get(suite) in dims else share
        for suite, share in fractions.items()
    }


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
    policy: GatePolicy | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Evaluate candidate and champion on the same samples, in stages; return the summaries.

    ``raw`` evaluates the model folders. ``gateway`` serves each version pinned behind the
    full control stack (:func:`loopwright.release.gateway_view.pinned_gateways`; no alias
    is read or moved) and evaluates the endpoints on the same samples, paired.

    Staged (the policy's ``evaluation_stages``): the first look evaluates that share of
    every suite; the gate (:func:`loopwright.release.gate.decide` at an interim look) then
    names the keys whose comparison cannot yet resolve its margin, and only their suites
    get more samples at the next look, until the last stage (all samples). A look that
    passes, or finds a regression, ends the evaluation early. Without a baseline (first
    run) everything is evaluated at once. When the policy checks margins against run-to-run
    noise, the champion's noise (:func:`loopwright.release.noise.champion_noise`, cached on its
    version) goes into every view's ``noise``. Generations are cached under
    ``settings.run_path/eval-cache``, so a later look only generates the added samples and
    a rerun after a crash only what is missing. Each look is logged to MLflow; look
    ``i > 0`` writes under ``run_dir/look-<i>``.

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
        policy: the gate policy (views judged, stages, interim decisions); default the
            packaged one.

    Returns:
        ``(candidate, champion)`` summaries in the shape
        :func:`loopwright.release.summary.load_summary` reads, with ``views`` holding the
        policy's views and ``looks`` the staged looks; the champion's is None without a
        baseline (the gate's first-run path).

    Raises:
        GatewayViewError: the gateway view cannot serve a version.

    """
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.resources import champion_resources

    policy = policy or load_gate_policy()
    resources = champion_resources(settings, settings.run_path / "model-cache")
    common: dict[str, Any] = {
        "suite_dir": suite_dir,
        "data_root": data_root,
        "cache_dir": settings.run_path / "eval-cache",
        "engine": EngineConfig(executor="ray", workers=workers, ray_address=settings.ray_address),
        "resources": resources,
        "mlflow_tracking_uri": settings.mlflow_tracking_uri,
        "mlflow_experiment": f"{settings.app}-eval",
        "skip_unavailable": True,
    }
    stages = policy.evaluation_stages if baseline_uri is not None else [1.0]
    with _Views(settings, candidate_uri, baseline_uri, policy.views, run_dir, common) as views:
        fractions: dict[str, float] | None = None
        looks: list[Look] = []
        for i, share in enumerate(stages):
            final = i == len(stages) - 1
            raw, gateway = views.evaluate(suites, fractions or {}, share, look=i)
            if fractions is None:
                fractions = {suite: share for suite in _suite_dimensions(raw, gateway)}
            candidate = _summary(raw, gateway, candidate_uri, baseline_uri)
            champion = _baseline_summary(raw, gateway, baseline_uri)
            verdict = decide(
                EvalSummary.model_validate(candidate),
                EvalSummary.model_validate(champion) if champion is not None else None,
                policy,
                final_look=final,
            )
            # A pass or a regression is settled; anything else gets more samples (all
            # suites when nothing is inconclusive, e.g. a missing key: complete evidence).
            settled = verdict.decision == "pass" or bool(verdict.regressed_keys())
            dims = _suite_dimensions(raw, gateway)
            wanted = verdict.inconclusive_keys() or set(dims.values())
            extend = [] if final or settled else sorted(wanted)
            looks.append(Look(fractions=fractions, decision=verdict.decision, extended=extend))
            logger.info("look %d: gate %s; more samples for %s", i, verdict.decision, extend)
            if not extend:
                break
            fractions = next_fractions(fractions, dims, set(extend), stages[i + 1])
    candidate["looks"] = [look.model_dump() for look in looks]
    if baseline_uri is not None and policy.min_margin_over_noise is not None:
        from loopwright.release.noise import champion_noise

        noise = champion_noise(
            settings,
            baseline_uri,
            suite_dir=suite_dir,
            data_root=data_root,
            run_dir=run_dir / "noise",
            engine=common["engine"],
            resources=resources,
            suites=suites,
            cache_dir=common["cache_dir"],
            share=stages[0],
        )
        for view in candidate["views"].values():
            view["noise"] = {k: v for k, v in noise.items() if k in view["values"]}
    return candidate, champion


def _baseline_summary(
    raw: EvalResult | None, gateway: EvalResult | None, baseline_uri: str | None
) -> dict[str, Any] | None:
    if baseline_uri is None:
        return None
    base_raw = _as_baseline(raw, baseline_uri) if raw is not None else None
    base_gw = _as_baseline(gateway, baseline_uri) if gateway is not None else None
    if base_raw is None and base_gw is None:
        return None
    return _summary(base_raw, base_gw, baseline_uri, None)


class _Views:
    """The views a policy judges, evaluated look after look (gateways kept up between)."""

    def __init__(
        self,
        settings: Settings,
        candidate_uri: str,
        baseline_uri: str | None,
        views: Sequence[View],
        run_dir: Path,
        common: dict[str, Any],
    ) -> None:
        self.settings = settings
        self.candidate_uri = candidate_uri
        self.baseline_uri = baseline_uri
        self.views = list(dict.fromkeys(views))
        self.run_dir = run_dir
        self.common = common
        self.served: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Views:
        if "gateway" in self.views:
            from loopwright.release.gateway_view import parse_version, pinned_gateways

            name = self.settings.registered_model("policy")
            self.cand_v = parse_version(self.candidate_uri, name)
            self.base_v = (
                parse_version(self.baseline_uri, name) if self.baseline_uri is not None else None
            )
            versions = [self.cand_v] if self.base_v is None else [self.cand_v, self.base_v]
            log_dir = self.run_dir / "gateway" / "interaction-log"
            self.served = self._stack.enter_context(
                pinned_gateways(self.settings, versions, log_dir=log_dir)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def evaluate(
        self, suites: list[str] | None, fractions: Mapping[str, float], share: float, look: int
    ) -> tuple[EvalResult | None, EvalResult | None]:
        """Both views at these shares (``share`` for suites not in ``fractions`` yet)."""
        from loopwright.evaluation.api import evaluate

        shares: Mapping[str, float] | float = fractions or share
        base = self.run_dir if look == 0 else self.run_dir / f"look-{look}"
        raw = gateway = None
        if "raw" in self.views:
            started = time.perf_counter()
            raw = evaluate(
                self.candidate_uri,
                suites or "all",
                self.baseline_uri,
                run_dir=base,
                sample_fractions=shares,
                **self.common,
            )
            logger.info("raw view, look %d: %.1f s", look, time.perf_counter() - started)
        if "gateway" in self.views:
            started = time.perf_counter()
            gateway = evaluate(
                self.served[self.cand_v],
                suites or "all",
                self.served[self.base_v] if self.base_v is not None else None,
                run_dir=base / "gateway",
                sample_fractions=shares,
                **self.common,
            )
            logger.info("gateway view, look %d: %.1f s", look, time.perf_counter() - started)
        return raw, gateway
