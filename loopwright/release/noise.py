"""Run-to-run noise of the champion's evaluation, measured once per champion and suite version.

The gate requires every non-safety margin to exceed ``min_margin_over_noise`` times the
metric's run-to-run standard deviation: a margin inside the noise would make the gate flap
on reruns of the same models. The noise is what changes when the *same* model is evaluated
again the way the gate evaluates it: the suites' own decoding (greedy, or sampling with
seeds where a suite samples), a different sampling seed and a different batch composition
(padding changes the arithmetic), fresh generations. Greedy suites usually reproduce
exactly on one machine, so their noise is often 0; sampled suites are not.

Measured on the raw view (the model folder) and applied to both views: the gateway view
adds retrieval, rails and fallbacks, which are deterministic for a given prompt, around the
same generations. The result is cached as a tag on the champion's model version, keyed by
a digest of the suites and their samples, so one champion pays for it once per suite
version (and the cache lives in the registry, which every worker shares).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.scorers import ScorerResources

logger = logging.getLogger(__name__)

TAG_PREFIX = "eval.noise."
# Batch sizes of the reruns: the gate's default, then an odd one, so padding differs.
RERUN_BATCH_SIZES = (32, 7)


def suite_digest(suite_dir: Path, data_root: Path, suites: list[str] | None) -> str:
    """A short digest of the suite files and their sample files (the suite version).

    Reads only each file's ``name`` and ``samples`` keys: a suite whose scorers need a
    resource (a guard, a reward model) is still part of the version.
    """
    digest = hashlib.sha256()
    for path in sorted([*suite_dir.glob("*.yaml"), *suite_dir.glob("*.yml")]):
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if suites is not None and spec.get("name") not in suites:
            continue
        digest.update(path.read_bytes())
        samples = data_root / str(spec.get("samples", ""))
        if samples.is_file():
            digest.update(samples.read_bytes())
    return digest.hexdigest()[:16]


def noise_from_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Standard deviation per key across runs (keys present in every run), >= 0. Pure."""
    if len(runs) < 2:
        raise ValueError(f"noise needs at least 2 runs, got {len(runs)}")
    keys = set(runs[0]).intersection(*runs[1:])
    return {k: statistics.stdev([r[k] for r in runs]) for k in sorted(keys)}


def measure_rerun_noise(
    model_uri: str,
    *,
    suite_dir: Path,
    data_root: Path,
    run_dir: Path,
    engine: EngineConfig,
    resources: ScorerResources | None,
    suites: list[str] | None = None,
    cache_dir: Path | None = None,
    share: float = 1.0,
) -> dict[str, float]:
    """Evaluate ``model_uri`` twice; per dimension, the primary metric's standard deviation.

    The first run is the gate's own evaluation (``cache_dir``: its generation cache, so
    nothing is generated again); the second generates everything afresh with another batch
    size (:data:`RERUN_BATCH_SIZES`) and another sampling seed.

    Args:
        model_uri: the model to evaluate twice.
        suite_dir: folder of suite YAML files.
        data_root: folder the suites' sample paths are relative to.
        run_dir: where the runs write their files.
        engine: evaluation engine settings (the second run changes the batch size).
        resources: reward model / guard for model-based scorers.
        suites: suite names (default all).
        cache_dir: the gate evaluation's generation cache (None: the first run generates
            too).
        share: share of each suite's sample families evaluated, in (0, 1]. Below 1 the
            noise of a smaller sample's mean is measured, which overstates the full suite's
            (conservative for the margin check) and costs proportionally less.

    Returns:
        dimension -> run-to-run standard deviation of its primary metric (metric units).
    """
    from loopwright.evaluation.api import evaluate
    from loopwright.evaluation.report import ALL
    from models.generation import DecodingParams

    per_run: list[dict[str, float]] = []
    for i, batch in enumerate(RERUN_BATCH_SIZES):
        folder = run_dir / f"rerun-{i}"
        result = evaluate(
            model_uri,
            suites or "all",
            suite_dir=suite_dir,
            data_root=data_root,
            run_dir=folder,
            cache_dir=cache_dir if i == 0 and cache_dir is not None else folder / "cache",
            engine=replace(engine, batch_size=batch),
            decoding=DecodingParams(seed=1000 * i),
            resources=resources,
            skip_unavailable=True,
            sample_fractions=share,
        )
        primary: dict[str, float] = {}
        for m in sorted(result.metrics, key=lambda m: m.suite):
            if m.primary and m.slice == ALL and m.n > 0:
                primary.setdefault(m.dimension, m.value)
        per_run.append(primary)
    return noise_from_runs(per_run)


def cached_noise(tags: Mapping[str, str], digest: str) -> dict[str, float] | None:
    """The noise cached on a model version for this suite digest, or None. Pure."""
    raw = tags.get(TAG_PREFIX + digest)
    if raw is None:
        return None
    data: Any = json.loads(raw)
    return {str(k): float(v) for k, v in data.items()}


def noise_tag(digest: str, noise: Mapping[str, float]) -> dict[str, str]:
    """The version tag that caches ``noise`` for this suite digest."""
    return {TAG_PREFIX + digest: json.dumps({k: round(v, 6) for k, v in noise.items()})}


def champion_noise(
    settings: Any,
    champion_uri: str,
    *,
    suite_dir: Path,
    data_root: Path,
    run_dir: Path,
    engine: EngineConfig,
    resources: ScorerResources | None,
    suites: list[str] | None = None,
    cache_dir: Path | None = None,
    share: float = 1.0,
) -> dict[str, float]:
    """The champion's run-to-run noise: from its version tag, else measured and cached there.

    Args:
        settings: main config (registry name, lock folder).
        champion_uri: ``models:/<app>-policy/<version>``.
        suite_dir: folder of suite YAML files the gate evaluates.
        data_root: folder the suites' sample paths are relative to.
        run_dir: where the reruns write their files.
        engine: the gate evaluation's engine settings (the reruns change the batch size).
        resources: reward model / guard for model-based scorers.
        suites: suite names (default all).
        cache_dir: the gate evaluation's generation cache (reused by the first run).
        share: share of each suite measured (:func:`measure_rerun_noise`).
    """
    from mlflow import MlflowClient

    from loopwright.release.gateway_view import parse_version
    from loopwright.release.registry_ops import RegistryOps

    name = settings.registered_model("policy")
    version = parse_version(champion_uri, name)
    digest = f"{suite_digest(suite_dir, data_root, suites)}-{share:g}"
    client = MlflowClient()
    cached = cached_noise(client.get_model_version(name, version).tags, digest)
    if cached is not None:
        logger.info("run-to-run noise of %s (suites %s) from its tag", champion_uri, digest)
        return cached
    noise = measure_rerun_noise(
        champion_uri,
        suite_dir=suite_dir,
        data_root=data_root,
        run_dir=run_dir,
        engine=engine,
        resources=resources,
        suites=suites,
        cache_dir=cache_dir,
        share=share,
    )
    ops = RegistryOps(client, settings.app, settings.run_path / "locks")
    ops.set_version_tags(name, version, noise_tag(digest, noise))
    logger.info("run-to-run noise of %s measured: %s", champion_uri, noise)
    return noise
