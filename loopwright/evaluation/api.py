"""The flow-ready entry points: ``evaluate`` and ``measure_noise``.

``evaluate`` measures one model, optionally paired against a baseline; ``measure_noise``
measures the run-to-run spread of suites under sampling.

Both are plain functions that take identifiers and paths and return small typed results
whose files live under ``run_dir``; the nightly flow calls them from a Prefect task, the
CLI from ``loopwright eval``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from loopwright.evaluation.engine import (
    EngineConfig,
    GenerationOutcome,
    GenerationRequest,
    Progress,
    generate,
    ray_session,
    resolve_executor,
)
from loopwright.evaluation.html import render_html
from loopwright.evaluation.report import (
    ALL,
    MetricSummary,
    PairedMetric,
    aggregate,
    build_summary,
    compare,
    to_eval_report,
)
from loopwright.evaluation.scorers import ScorerResources
from loopwright.evaluation.scoring import SampleResult, score_suite
from loopwright.evaluation.stats import DEFAULT_RESAMPLES
from loopwright.evaluation.store import Generation, GenerationStore
from loopwright.evaluation.suites import (
    Suite,
    discover_suites,
    load_samples,
    needed_resources,
    sample_share,
)
from loopwright.evaluation.targets import (
    EndpointTarget,
    LocalModelTarget,
    Target,
    resolve_target,
)
from loopwright.records import EvalReport, EvalSample, write_jsonl
from models.generation import DecodingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation produced; files live under ``run_dir``.

    Attributes:
        report: the ``EvalReport`` record of the model.
        baseline_report: the baseline's, when a baseline was given.
        metrics: every metric on every slice (n, CI, error counts).
        comparison: paired candidate-vs-baseline metrics, when a baseline was given.
        summary: the JSON summary the gate reads (also at ``paths['summary']``).
        paths: summary, report, html, samples (+ baseline_report, baseline_samples).
        counts: samples, generations, cached, generated, generation_errors, score_errors.
        mlflow_run_id: set when the result was logged to MLflow.

    """

    model_uri: str
    model_id: str
    baseline_uri: str | None
    baseline_id: str | None
    run_dir: Path
    report: EvalReport
    baseline_report: EvalReport | None
    metrics: list[MetricSummary]
    baseline_metrics: list[MetricSummary] | None
    comparison: list[PairedMetric] | None
    summary: dict[str, Any]
    paths: dict[str, Path]
    counts: dict[str, float]
    mlflow_run_id: str | None = None

    @property
    def errors(self) -> int:
        """Generation errors of the evaluated model (samples x repeats)."""
        return int(self.counts["generation_errors"])

    def metric(self, dimension: str, metric: str, slice: str = ALL) -> MetricSummary:
        """Look up one metric; raises KeyError listing what exists."""
        for m in self.metrics:
            if (m.dimension, m.metric, m.slice) == (dimension, metric, slice):
                return m
        have = sorted({f"{m.dimension}/{m.metric}/{m.slice}" for m in self.metrics})
        raise KeyError(f"no metric {dimension}/{metric}/{slice}; have: {have}")


# --------------------------------------------------------------------------- internals


@dataclass
class _Plan:
    suites: list[Suite]
    samples: dict[str, list[EvalSample]]
    base: DecodingParams
    skipped: dict[str, str] = field(default_factory=dict)


def _params(suite: Suite, base: DecodingParams, repeat: int) -> DecodingParams:
    params = suite.decoding(base)
    if suite.spec.repeats > 1:
        params = replace(params, seed=params.seed + repeat)
    return params


def _requests(target: Target, plan: _Plan) -> tuple[list[GenerationRequest], dict[Any, str]]:
    reqs: list[GenerationRequest] = []
    index: dict[tuple[str, str, int], str] = {}
    for suite in plan.suites:
        for sample in plan.samples[suite.name]:
            for repeat in range(suite.spec.repeats):
                req = GenerationRequest.make(
                    target.model_id, sample, _params(suite, plan.base, repeat), repeat
                )
                reqs.append(req)
                index[(suite.name, sample.id, repeat)] = req.key
    return reqs, index


_Generations = dict[str, dict[tuple[str, int], Generation]]
"""Suite name -> (sample id, repeat) -> generation."""


def _run_model(
    target: Target,
    plan: _Plan,
    store: GenerationStore,
    engine: EngineConfig,
    progress: Progress | None,
    label: str,
) -> tuple[_Generations, GenerationOutcome]:
    reqs, index = _requests(target, plan)
    outcome = generate(target, reqs, store, engine, progress=progress, label=label)
    gens: _Generations = {s.name: {} for s in plan.suites}
    for (suite_name, sid, repeat), key in index.items():
        gens[suite_name][(sid, repeat)] = outcome.by_key[key]
    return gens, outcome


def _score_all(
    plan: _Plan,
    gens: Mapping[str, Mapping[tuple[str, int], Generation]],
    model_id: str,
    baseline: Mapping[str, Mapping[tuple[str, int], Generation]] | None,
) -> dict[str, list[SampleResult]]:
    return {
        s.name: score_suite(
            s,
            plan.samples[s.name],
            gens[s.name],
            model_id=model_id,
            baseline=baseline[s.name] if baseline is not None else None,
        )
        for s in plan.suites
    }


def _count(rows: Mapping[str, Sequence[SampleResult]]) -> tuple[int, int]:
    gen_errors = sum(1 for rs in rows.values() for r in rs if r.error is not None)
    score_errors = sum(len(r.score_errors) for rs in rows.values() for r in rs)
    return gen_errors, score_errors


@contextlib.contextmanager
def _maybe_ray(engine: EngineConfig, targets: Sequence[Target | None]) -> Iterator[None]:
    # One Ray session for candidate and baseline: start-up is paid once.
    local_model = any(isinstance(t, LocalModelTarget) for t in targets)
    if local_model and resolve_executor(engine) == "ray":
        with ray_session(engine):
            yield
    else:
        yield


def _plan(
    suite_dir: str | Path,
    suites: Sequence[str] | Literal["all"],
    data_root: str | Path,
    resources: ScorerResources | None,
    decoding: DecodingParams | None,
    skip_unavailable: bool = False,
    sample_fractions: Mapping[str, float] | float | None = None,
) -> _Plan:
    skipped: dict[str, str] = {}
    if skip_unavailable:
        have = resources or ScorerResources()
        needs = needed_resources(suite_dir)
        for name, wanted in needs.items():
            missing = [w for w in wanted if getattr(have, w, None) is None]
            if missing and (suites == "all" or name in suites):
                skipped[name] = f"needs {', '.join(missing)} (not given)"
                logger.warning("skipping suite %s: %s", name, skipped[name])
        if suites == "all":
            suites = sorted(n for n in needs if n not in skipped)
        else:
            suites = [n for n in suites if n not in skipped]
    loaded = discover_suites(suite_dir, suites, data_root=data_root, resources=resources)
    if isinstance(sample_fractions, float | int):
        default, fractions = float(sample_fractions), {}
    else:
        default, fractions = 1.0, dict(sample_fractions or {})
    samples = {
        s.name: sample_share(load_samples(s), fractions.get(s.name, default)) for s in loaded
    }
    return _Plan(loaded, samples, decoding or DecodingParams(), skipped)


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model: str | Target,
    suites: Sequence[str] | Literal["all"] = "all",
    baseline: str | Target | None = None,
    *,
    suite_dir: str | Path,
    data_root: str | Path,
    run_dir: str | Path,
    cache_dir: str | Path | None = None,
    engine: EngineConfig | None = None,
    decoding: DecodingParams | None = None,
    resources: ScorerResources | None = None,
    progress: Progress | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    api_key: str | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment: str = "loopwright-eval",
    skip_unavailable: bool = False,
    sample_fractions: Mapping[str, float] | float | None = None,
) -> EvalResult:
    """Evaluate a model on suites, optionally paired against a baseline on the same samples.

    Args:
        model: a model folder, a registry URI (``models:/NAME@ALIAS``), an endpoint
            (``http://HOST:PORT/v1#MODEL``, e.g. the gateway), or a target object.
        suites: suite names in ``suite_dir``, or ``"all"``.
        baseline: same forms as ``model``; enables the paired comparison and pairwise
            metrics (win rate).
        suite_dir: folder of suite YAML files.
        data_root: folder the suites' sample paths are relative to.
        run_dir: where this evaluation writes its files (created). Rerunning with the same
            ``run_dir`` (and ``cache_dir``) resumes: only missing generations are made.
        cache_dir: generation store folder shared across runs (default ``run_dir/cache``).
        engine: execution settings (Ray actor pool by default; needs ``ray_temp_dir`` or
            ``ray_address``).
        decoding: default decoding (greedy, 48 new tokens); suites may override.
        resources: reward model / guard for model-based scorers.
        progress: callback (label, done, total).
        resamples: bootstrap resamples per interval.
        seed: bootstrap seed (CIs are reproducible).
        api_key: bearer token for endpoint targets.
        mlflow_tracking_uri: when set, everything is also logged to MLflow.
        mlflow_experiment: MLflow experiment name.
        skip_unavailable: skip (and list in the summary as ``skipped_suites``) suites
            whose model-based scorers need a resource not given; default: fail.
        sample_fractions: share of each suite's sample families to evaluate, in (0, 1]
            (:func:`loopwright.evaluation.suites.sample_share`): one share for every
            suite, or suite name -> share (absent: all). A staged evaluation raises a
            suite's share; cached generations are reused.

    Returns:
        The result with report, metrics, comparison and file paths.

    Raises:
        SuiteError: a bad suite or sample file (names file and line).
        TargetError: a model reference that cannot be resolved.
        EngineError: the engine cannot run as configured.

    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    engine = engine or EngineConfig()
    plan = _plan(
        suite_dir, suites, data_root, resources, decoding, skip_unavailable, sample_fractions
    )
    target = resolve_target(model, download_root=run_dir / "models", api_key=api_key)
    base_target = (
        resolve_target(baseline, download_root=run_dir / "models", api_key=api_key)
        if baseline is not None
        else None
    )
    arms = [(target, "candidate" if base_target else "generate")]
    if base_target is not None:
        arms.append((base_target, "baseline"))

    def run(arm: tuple[Target, str]) -> tuple[_Generations, GenerationOutcome]:
        arm_target, label = arm
        store = GenerationStore.for_model(cache, arm_target.model_id)
        return _run_model(arm_target, plan, store, engine, progress, label)

    with _maybe_ray(engine, [target, base_target]):
        if all(isinstance(t, EndpointTarget) for t, _ in arms):
            # Endpoints do their work server-side: both arms in flight at once keep both
            # servers busy (two pinned gateways each generate on their own core; one arm
            # at a time left a 2-core machine half idle).
            with ThreadPoolExecutor(len(arms)) as pool:
                results = list(pool.map(run, arms))
        else:  # local models share this process's (or Ray's) CPUs: one arm at a time
            results = [run(arm) for arm in arms]
    gens, outcome = results[0]
    base_gens, base_outcome = results[1] if base_target is not None else (None, None)
    rows = _score_all(plan, gens, target.model_id, base_gens)
    base_rows = (
        _score_all(plan, base_gens, base_target.model_id, None)
        if base_gens is not None and base_target is not None
        else None
    )
    metrics = aggregate(plan.suites, rows, resamples=resamples, seed=seed)
    base_metrics = (
        aggregate(plan.suites, base_rows, resamples=resamples, seed=seed)
        if base_rows is not None
        else None
    )
    comparison = (
        compare(plan.suites, rows, base_rows, resamples=resamples, seed=seed)
        if base_rows is not None
        else None
    )
    gen_errors, score_errors = _count(rows)
    counts = {
        "samples": sum(len(v) for v in plan.samples.values()),
        "generations": outcome.requested,
        "cached": outcome.cached,
        "generated": outcome.generated,
        "generation_errors": gen_errors,
        "score_errors": score_errors,
        "generation_seconds": round(outcome.seconds, 3),
    }
    if base_outcome is not None and base_rows is not None:
        b_gen, b_score = _count(base_rows)
        counts.update(
            baseline_generated=base_outcome.generated,
            baseline_cached=base_outcome.cached,
            baseline_generation_errors=b_gen,
            baseline_score_errors=b_score,
        )
    report = to_eval_report(target.uri, plan.suites, metrics, gen_errors + score_errors)
    base_report = (
        to_eval_report(base_target.uri, plan.suites, base_metrics, sum(_count(base_rows)))
        if base_target is not None and base_metrics is not None and base_rows is not None
        else None
    )
    model_info = {"uri": target.uri, "id": target.model_id, "kind": target.kind}
    base_info = (
        {"uri": base_target.uri, "id": base_target.model_id, "kind": base_target.kind}
        if base_target is not None
        else None
    )
    summary = build_summary(
        model=model_info,
        baseline=base_info,
        suites=plan.suites,
        metrics=metrics,
        baseline_metrics=base_metrics,
        comparison=comparison,
        counts=counts,
        decoding=asdict(plan.base),
    )
    summary["skipped_suites"] = dict(plan.skipped)
    paths = {
        "summary": run_dir / "summary.json",
        "report": run_dir / "report.json",
        "html": run_dir / "report.html",
        "samples": run_dir / "samples.jsonl",
    }
    write_jsonl(paths["samples"], [r for rs in rows.values() for r in rs])
    paths["report"].write_text(report.model_dump_json(indent=2), encoding="utf-8")
    if base_report is not None and base_rows is not None:
        paths["baseline_report"] = run_dir / "baseline_report.json"
        paths["baseline_samples"] = run_dir / "baseline_samples.jsonl"
        paths["baseline_report"].write_text(base_report.model_dump_json(indent=2), "utf-8")
        write_jsonl(paths["baseline_samples"], [r for rs in base_rows.values() for r in rs])
    paths["summary"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    paths["html"].write_text(
        render_html(
            title=f"Evaluation of {target.uri}",
            model=model_info,
            baseline=base_info,
            metrics=metrics,
            baseline_metrics=base_metrics,
            comparison=comparison,
            counts=counts,
        ),
        encoding="utf-8",
    )
    if gen_errors:
        logger.warning("%d generations failed; they are excluded and counted", gen_errors)
    result = EvalResult(
        model_uri=target.uri,
        model_id=target.model_id,
        baseline_uri=base_target.uri if base_target else None,
        baseline_id=base_target.model_id if base_target else None,
        run_dir=run_dir,
        report=report,
        baseline_report=base_report,
        metrics=metrics,
        baseline_metrics=base_metrics,
        comparison=comparison,
        summary=summary,
        paths=paths,
        counts=counts,
    )
    if mlflow_tracking_uri is not None:
        from loopwright.evaluation.mlflow_log import log_to_mlflow

        run_id = log_to_mlflow(
            result, tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment
        )
        result = replace(result, mlflow_run_id=run_id)
    gate_path = run_dir / "gate_summary.json"
    gate_path.write_text(json.dumps(_clean_json(gate_summary(result)), indent=2), "utf-8")
    result.paths["gate_summary"] = gate_path
    return result


def _clean_json(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class NoiseMetric:
    """Spread of one metric (slice ``all``) over repeated runs of a suite.

    Attributes:
        values: the metric in each run, in seed order.
        mean, std: over runs (``std`` is the sample standard deviation; 0 for one run).
        spread: max - min over runs.

    """

    suite: str
    dimension: str
    metric: str
    direction: str
    primary: bool
    values: list[float]
    mean: float
    std: float
    spread: float


@dataclass(frozen=True)
class NoiseReport:
    """Run-to-run noise of suites under sampling; a gate's margin should exceed it."""

    model_uri: str
    runs: int
    temperature: float
    seeds: list[int]
    metrics: list[NoiseMetric] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def measure_noise(
    model: str | Target,
    suites: Sequence[str] | Literal["all"],
    *,
    runs: int = 5,
    temperature: float = 0.7,
    suite_dir: str | Path,
    data_root: str | Path,
    run_dir: str | Path,
    cache_dir: str | Path | None = None,
    engine: EngineConfig | None = None,
    decoding: DecodingParams | None = None,
    resources: ScorerResources | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> NoiseReport:
    """Run suites ``runs`` times with sampling (seeds ``seed..seed+runs-1``) and report spread.

    Every suite is decoded at ``temperature`` regardless of its own decoding settings, so
    the spread measures what sampling changes. Writes ``noise.json`` to ``run_dir``.

    Raises:
        ValueError: ``runs`` < 2 or ``temperature`` <= 0 (nothing would vary).

    """
    if runs < 2:
        raise ValueError(f"runs must be >= 2 to measure a spread, got {runs}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    engine = engine or EngineConfig()
    base = replace(decoding or DecodingParams(), temperature=temperature)
    plan = _plan(suite_dir, suites, data_root, resources, base)
    forced = [
        replace(
            s,
            spec=s.spec.model_copy(
                update={
                    "decoding": s.spec.decoding.model_copy(
                        update={"temperature": temperature, "seed": None}
                    )
                }
            ),
        )
        for s in plan.suites
    ]
    target = resolve_target(model, download_root=run_dir / "models")
    store = GenerationStore.for_model(cache, target.model_id)
    per_run: list[list[MetricSummary]] = []
    seeds = [seed + i for i in range(runs)]
    with _maybe_ray(engine, [target]):
        for s in seeds:
            run_plan = _Plan(forced, plan.samples, replace(base, seed=s))
            gens, _ = _run_model(target, run_plan, store, engine, progress, f"noise seed {s}")
            rows = _score_all(run_plan, gens, target.model_id, None)
            per_run.append(
                [m for m in aggregate(forced, rows, resamples=100, seed=s) if m.slice == ALL]
            )
    out = []
    for i, first in enumerate(per_run[0]):
        values = [run[i].value for run in per_run]
        finite = [v for v in values if v == v]
        out.append(
            NoiseMetric(
                suite=first.suite,
                dimension=first.dimension,
                metric=first.metric,
                direction=first.direction,
                primary=first.primary,
                values=values,
                mean=statistics.fmean(finite) if finite else float("nan"),
                std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
                spread=(max(finite) - min(finite)) if finite else float("nan"),
            )
        )
    report = NoiseReport(
        model_uri=target.uri, runs=runs, temperature=temperature, seeds=seeds, metrics=out
    )
    (run_dir / "noise.json").write_text(json.dumps(report.to_json(), indent=2), "utf-8")
    return report


# --------------------------------------------------------------------------- gate view


def _primary_metrics(metrics: Sequence[MetricSummary]) -> dict[tuple[str, str], MetricSummary]:
    """(dimension, slice) -> the primary metric of the dimension's first suite (by name)."""
    out: dict[tuple[str, str], MetricSummary] = {}
    for m in sorted(metrics, key=lambda m: m.suite):
        if m.primary and m.n > 0:
            out.setdefault((m.dimension, m.slice), m)
    return out


def _key(dimension: str, slice_name: str) -> str:
    return dimension if slice_name == ALL else f"{dimension}/{slice_name}"


def gate_view(result: EvalResult, noise: NoiseReport | None = None) -> dict[str, Any]:
    """One view of the gate's evaluation summary: primary metric per dimension and slice.

    Keys are ``<dimension>`` and ``<dimension>/<slice>``; ``values`` hold
    ``{metric, value, ci_low, ci_high, n}``, ``paired`` (with a baseline)
    ``{metric, delta, ci_low, ci_high, n, win_rate}`` with ``delta`` = candidate minus
    baseline in the metric's units, ``noise`` the run-to-run standard deviation of the
    dimension's primary metric.
    """
    primary = _primary_metrics(result.metrics)
    values = {
        _key(d, sl): {
            "metric": m.metric,
            "value": m.value,
            "ci_low": m.ci_low,
            "ci_high": m.ci_high,
            "n": m.n,
        }
        for (d, sl), m in primary.items()
    }
    paired: dict[str, Any] = {}
    for p in result.comparison or []:
        chosen = primary.get((p.dimension, p.slice))
        if chosen is None or chosen.suite != p.suite or chosen.metric != p.metric or p.n == 0:
            continue
        paired[_key(p.dimension, p.slice)] = {
            "metric": p.metric,
            "delta": p.delta,
            "ci_low": p.ci_low,
            "ci_high": p.ci_high,
            "n": p.n,
            "win_rate": p.win_rate,
        }
    noise_out: dict[str, float] = {}
    for nm in noise.metrics if noise is not None else []:
        chosen = primary.get((nm.dimension, ALL))
        if chosen is not None and chosen.suite == nm.suite and chosen.metric == nm.metric:
            noise_out[nm.dimension] = nm.std
    return {"values": values, "paired": paired, "noise": noise_out}


def gate_summary(
    raw: EvalResult,
    gateway: EvalResult | None = None,
    *,
    noise_raw: NoiseReport | None = None,
    noise_gateway: NoiseReport | None = None,
    eval_run_id: str | None = None,
) -> dict[str, Any]:
    """Build the evaluation summary in the shape the release gate reads (loopwright.release).

    Args:
        raw: the candidate evaluated as a model folder (with the champion as baseline).
        gateway: the candidate evaluated through the gateway's control stack, if run.
        noise_raw: run-to-run noise of the raw view's suites.
        noise_gateway: run-to-run noise of the gateway view's suites.
        eval_run_id: the MLflow run holding the evaluation.

    """
    views = {"raw": gate_view(raw, noise_raw)}
    errors = raw.report.errors
    if gateway is not None:
        views["gateway"] = gate_view(gateway, noise_gateway)
        errors += gateway.report.errors
    return {
        "schema_version": 1,
        "model_uri": raw.model_uri,
        "baseline_uri": raw.baseline_uri,
        "views": views,
        "errors": errors,
        "eval_run_id": eval_run_id or raw.mlflow_run_id,
    }
