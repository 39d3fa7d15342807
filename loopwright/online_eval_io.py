"""Online evaluation's inputs and outputs: the shipped log, the champions, MLflow, Prometheus.

:func:`evaluate_live` gathers what :func:`loopwright.online_eval.evaluate_window` scores
(the window's records through the canary analysis' reader, the guard and reward champions
as the release evaluation loads them, the gateway's knowledge base, the champion's training
prompts at its data version); :func:`log_result`, :func:`tag_versions` and
:func:`push_result` publish the figures. The Prefect tasks call one of these each.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from loopwright.config import Settings
from loopwright.online_eval import (
    Judge,
    JudgeEndpoint,
    OnlineEvalConfig,
    OnlineEvalResult,
    evaluate_window,
)

logger = logging.getLogger(__name__)

# Model-version tags get these figures (the latest window's); MLflow keeps the history.
TAGGED_FIGURES = (
    "total",
    "sampled",
    "harmful_rate",
    "reward_mean",
    "judge_mean",
    "ungrounded_rate",
    "negative_rating_rate",
    "correction_rate",
    "output_block_rate",
    "fallback_rate",
)
# Gauges pushed to Prometheus (``loopwright_online_<figure>``), the same names as in MLflow.
GAUGE_FIGURES = (
    *TAGGED_FIGURES,
    "empty_rate",
    "feedback_rate",
    "output_flag_rate",
    "error_rate",
    "latency_p95_ms",
)


def experiment_name(settings: Settings) -> str:
    """The MLflow experiment of the online figures: ``<app>-online-eval``."""
    return f"{settings.app}-online-eval"


def _dvc_object(settings: Settings, md5: str) -> bytes | None:
    """A DVC 3 cache object by md5: the data repo's local cache, else the remote."""
    from loopwright.datastore import remote_url
    from loopwright.storage import ObjectStore, StorageError

    rel = f"files/md5/{md5[:2]}/{md5[2:]}"
    local = settings.data_repo.resolve() / ".dvc" / "cache" / rel
    if local.is_file():
        return local.read_bytes()
    try:
        return ObjectStore.from_settings(settings).get_bytes(f"{remote_url(settings)}/{rel}")
    except StorageError as exc:
        logger.info("DVC object %s not in the remote either: %s", md5, exc)
        return None


def _files_at(settings: Settings, data_version: str, relpaths: list[str]) -> dict[str, bytes]:
    """Files of ``data/`` as snapshotted at ``data_version`` (the ``.dir`` md5 of data.dvc)."""
    manifest = _dvc_object(settings, data_version)
    if manifest is None:
        return {}
    entries = {e["relpath"]: e["md5"] for e in json.loads(manifest)}
    out = {}
    for rel in relpaths:
        if rel in entries and (blob := _dvc_object(settings, entries[rel])) is not None:
            out[rel] = blob
    return out


def _last_user_prompts(jsonl: bytes) -> list[str]:
    """The last user message of each ``{"messages": [...]}`` line (SFT rows)."""
    prompts = []
    for line in jsonl.decode("utf-8").splitlines():
        if not line.strip():
            continue
        users = [m["content"] for m in json.loads(line).get("messages", []) if m["role"] == "user"]
        if users:
            prompts.append(str(users[-1]))
    return prompts


def champion_training_prompts(settings: Settings) -> tuple[list[str], str]:
    """The policy champion's training prompts and a line saying where they came from.

    Its training rows are the domain's replay file (``nightly.replay_file``: the rows every
    champion was trained on) plus the curated SFT rows, read at the champion's
    ``data_version`` tag from the DVC cache or remote. When that version cannot be read,
    the data repository's current files stand in, and the line says so.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from loopwright.domain import load_domain

    name = settings.registered_model("policy")
    relpaths = [
        f"{load_domain(settings.domain).data_folder()}/{settings.nightly.replay_file}",
        "curated/sft.jsonl",
    ]
    try:
        champion = MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return [], f"none: {name} has no champion"
    version = champion.tags.get("data_version")
    files = _files_at(settings, version, relpaths) if version else {}
    where = f"{name} v{champion.version} training prompts at data version {version}"
    if not files:
        root = settings.data_repo.resolve() / "data"
        files = {rel: (root / rel).read_bytes() for rel in relpaths if (root / rel).is_file()}
        where = (
            f"current data/ (data version {version or 'untagged'} of {name} "
            f"v{champion.version} not readable)"
        )
    prompts = [p for rel in relpaths if rel in files for p in _last_user_prompts(files[rel])]
    return prompts, f"{where}: {', '.join(sorted(files)) or 'no files'} ({len(prompts)} prompts)"


def serving_facts(settings: Settings) -> dict[str, str] | None:
    """Fact texts by id as the gateway retrieves them; None when it serves without retrieval."""
    from loopwright.gateway.components import knowledge_facts

    gw = settings.gateway
    if not (gw.augment.enabled and gw.augment.retrieval):
        return None
    return {f.id: f.text for f in knowledge_facts(gw.encoders, gw.domain or settings.domain)}


def endpoint_judge(endpoint: JudgeEndpoint) -> Judge:
    """The evaluation's ``llm_judge`` scorer on live answers (no references: none exist)."""
    from loopwright.evaluation.scorers import llm_judge
    from loopwright.records import EvalSample, Message

    scorer = llm_judge(**endpoint.model_dump())

    def grade(prompts: list[str], answers: list[str]) -> list[float | None]:
        samples = [
            EvalSample(
                id=f"live-{i}",
                suite="online",
                dimension="helpfulness",
                messages=[Message(role="user", content=prompt)],
            )
            for i, prompt in enumerate(prompts)
        ]
        return [score.value for score in scorer.score_batch(samples, answers)]

    return grade


def evaluate_live(
    settings: Settings, config: OnlineEvalConfig, now: datetime | None = None
) -> OnlineEvalResult:
    """Evaluate the window ``[now - lookback_s, now]`` of the shipped log (one call, one task).

    Missing champions (no guard, no reward model) leave their figures unmeasured and are
    logged; the harmful threshold is the gateway's output-rail threshold, else the guard's
    calibrated one, as the gateway itself decides it.
    """
    from loopwright.evaluation.resources import champion_resources
    from loopwright.release.canary_logs import load_window
    from loopwright.storage import ObjectStore

    end = now or datetime.now(UTC)
    start = end - timedelta(seconds=config.lookback_s)
    window = load_window(
        ObjectStore.from_settings(settings), f"s3://{settings.object_store.bucket}", start
    )
    resources = champion_resources(settings, settings.run_path / "model-cache")
    guard: Any = resources.guard
    explicit = settings.gateway.output_rails.harmful_threshold
    calibrated = dict(getattr(guard, "thresholds", {}) or {})
    prompts, reference = champion_training_prompts(settings)
    result = evaluate_window(
        window.interactions,
        window.feedback,
        app=settings.app,
        start=start,
        end=end,
        config=config,
        guard=guard,
        harmful_threshold=explicit if explicit is not None else calibrated.get("harmful", 0.5),
        reward=resources.reward,
        judge=endpoint_judge(config.judge) if config.judge is not None else None,
        facts=serving_facts(settings),
        reference_prompts=prompts,
        reference=reference,
        malformed=window.malformed,
    )
    logger.info(
        "online eval %s..%s: %d interactions, versions %s",
        start.isoformat(),
        end.isoformat(),
        result.interactions,
        {v: (f.sampled, f.total) for v, f in result.versions.items()},
    )
    return result


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created by a concurrent run in between
        return str(client.get_experiment_by_name(name).experiment_id)


def log_result(settings: Settings, result: OnlineEvalResult) -> str:
    """One MLflow run per window in ``<app>-online-eval``; returns its id.

    Metrics are ``v<version>.<figure>`` (e.g. ``v3.harmful_rate``) and ``window.<count>``,
    timestamped at the window end, so a chart of one metric across runs is that version's
    figure over time. Tags name the versions (``model_versions``, ``route.v<N>``) and the
    window; the whole result is the artifact ``online_eval.json``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    end_ms = int(result.window_end.timestamp() * 1000)
    tags = {
        "model_versions": ",".join(result.versions),
        "window_start": result.window_start.isoformat(),
        "window_end": result.window_end.isoformat(),
        "policy": result.policy,
        **{f"route.v{v}": ",".join(f.routes) for v, f in result.versions.items()},
    }
    run = client.create_run(
        _experiment_id(client, experiment_name(settings)),
        start_time=end_ms,
        tags=tags,
        run_name=f"window-{result.window_end:%Y%m%dT%H%M%SZ}",
    )
    run_id = str(run.info.run_id)
    params = {
        "samples_per_version": str(result.samples_per_version),
        "seed": str(result.seed),
        "lookback_s": str((result.window_end - result.window_start).total_seconds()),
        "reference": result.reference[:500],
    }
    metrics = [Metric(k, v, end_ms, 0) for k, v in sorted(result.metrics().items())]
    for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(
            run_id,
            metrics=metrics[i : i + 900],
            params=[Param(k, v) for k, v in params.items()] if i == 0 else [],
        )
    client.log_text(run_id, result.model_dump_json(indent=2), "online_eval.json")
    client.set_terminated(run_id)
    return run_id


def version_tags(result: OnlineEvalResult, version: str, run_id: str) -> dict[str, str]:
    """``online.*`` tags of one version: its latest figures, the window and the run."""
    fig = result.versions[version]
    tags = {
        "online.window_end": result.window_end.isoformat(),
        "online.run_id": run_id,
        "online.drifted": ",".join(d.feature for d in fig.drift if d.drifted) or "none",
    }
    for key in TAGGED_FIGURES:
        value = getattr(fig, key)
        tags[f"online.{key}"] = "unmeasured" if value is None else f"{value:.6g}"
    return tags


def tag_versions(settings: Settings, result: OnlineEvalResult, run_id: str) -> list[str]:
    """Write each evaluated version's latest figures as model-version tags; returns them.

    A version no longer in the registry is skipped (logged), not an error.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from loopwright.release.registry_ops import RegistryOps

    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    tagged = []
    for version in result.versions:
        try:
            ops.set_version_tags(result.policy, version, version_tags(result, version, run_id))
        except MlflowException as exc:
            logger.warning("cannot tag %s v%s: %s", result.policy, version, exc)
            continue
        tagged.append(version)
    return tagged


def push_result(result: OnlineEvalResult, url: str, timeout_s: float = 10.0) -> None:
    """Push the figures as gauges to a Prometheus Pushgateway at ``url``.

    One group per app (job ``loopwright-online-eval``, grouping label ``app``, which the
    Pushgateway adds to every series), replaced on every push, so a version that left the
    window leaves the gauges too. Gauges: ``loopwright_online_<figure>{model_version}``
    (the figures' names as in MLflow), ``loopwright_online_drift_psi`` and
    ``loopwright_online_drift_detected`` (also by ``feature``), and
    ``loopwright_online_window_end_timestamp_seconds``.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    gauges = {
        key: Gauge(
            f"loopwright_online_{key}",
            f"online evaluation: {key}",
            ["model_version"],
            registry=registry,
        )
        for key in GAUGE_FIGURES
    }
    by_feature = ["model_version", "feature"]
    psi = Gauge("loopwright_online_drift_psi", "input drift PSI", by_feature, registry=registry)
    detected = Gauge(
        "loopwright_online_drift_detected",
        "input drift: KS p-value and PSI past their thresholds (1) or not (0)",
        by_feature,
        registry=registry,
    )
    Gauge(
        "loopwright_online_window_end_timestamp_seconds",
        "end of the last evaluated window (Unix seconds)",
        registry=registry,
    ).set(result.window_end.timestamp())
    for version, fig in result.versions.items():
        for key, gauge in gauges.items():
            value = getattr(fig, key)
            if value is not None:
                gauge.labels(version).set(float(value))
        for d in fig.drift:
            psi.labels(version, d.feature).set(d.psi)
            detected.labels(version, d.feature).set(float(d.drifted))
    push_to_gateway(
        url,
        job="loopwright-online-eval",
        registry=registry,
        grouping_key={"app": result.app},
        timeout=timeout_s,
    )
