"""Log an evaluation to MLflow: metrics with CIs, the per-sample table, HTML and JSON.

Uses ``MlflowClient`` with an explicit tracking URI (no global ``mlflow.set_tracking_uri``)
so logging from a library call never changes the caller's MLflow state.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopwright.evaluation.api import EvalResult

logger = logging.getLogger(__name__)

_BAD = re.compile(r"[^A-Za-z0-9_\-. /:]")
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def metric_key(*parts: str) -> str:
    """Join parts into an MLflow-safe metric name (other symbols become ``_``)."""
    return _BAD.sub("_", ".".join(parts))


def _metric_entries(result: EvalResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in result.metrics:
        if m.n == 0:
            continue
        base = (
            metric_key(m.dimension, m.metric)
            if m.slice == "all"
            else metric_key(m.dimension, m.metric, m.slice)
        )
        out[base] = m.value
        out[base + ".ci_low"] = m.ci_low
        out[base + ".ci_high"] = m.ci_high
        out[base + ".n"] = float(m.n)
    for p in result.comparison or []:
        if p.n == 0 or p.slice != "all":
            continue
        base = metric_key("delta", p.dimension, p.metric)
        out[base] = p.delta
        out[base + ".ci_low"] = p.ci_low
        out[base + ".ci_high"] = p.ci_high
        out[metric_key("win_rate", p.dimension, p.metric)] = p.win_rate
    for k, v in result.counts.items():
        out[metric_key("counts", k)] = float(v)
    return {k: v for k, v in out.items() if isinstance(v, float) and math.isfinite(v)}


def log_to_mlflow(
    result: EvalResult,
    *,
    tracking_uri: str,
    experiment: str = "loopwright-eval",
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log metrics, params, the per-sample table and the report files to an MLflow run.

    Args:
        result: what :func:`loopwright.evaluation.evaluate` returned.
        tracking_uri: the MLflow server (``http://127.0.0.1:5000``).
        experiment: created if missing (when ``run_id`` is None).
        run_id: log into this existing run instead of creating one (left open).
        run_name: name of a new run.
        tags: extra run tags.

    Returns:
        The run id.

    Metric names: ``<dimension>.<metric>`` (+ ``.ci_low``, ``.ci_high``, ``.n``) for the
    whole dimension, ``<dimension>.<metric>.<tag>_<value>`` per slice,
    ``delta.<dimension>.<metric>`` and ``win_rate.<dimension>.<metric>`` with a baseline,
    ``counts.*``. Artifacts under ``eval/``: ``summary.json``, ``report.json``,
    ``report.html``, ``samples.jsonl`` and the table ``eval/samples_table.json``.

    """
    import pandas as pd
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    created = run_id is None
    if run_id is None:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        run_tags = {"loopwright.kind": "evaluation", **dict(tags or {})}
        run = client.create_run(exp_id, run_name=run_name or "eval", tags=run_tags)
        run_id = run.info.run_id
    now = int(time.time() * 1000)
    params: dict[str, Any] = {
        "model_uri": result.model_uri,
        "model_id": result.model_id,
        "baseline_uri": result.baseline_uri or "",
        "suites": ",".join(result.report.suites),
    }
    for k, v in (result.summary.get("decoding") or {}).items():
        params[f"decoding.{k}"] = v
    entries = _metric_entries(result)
    metrics = [Metric(k, v, now, 0) for k, v in sorted(entries.items())]
    client.log_batch(
        run_id,
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag("loopwright.model_id", result.model_id)],
    )
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
    for name in ("summary", "report", "html", "samples", "baseline_report", "baseline_samples"):
        path = result.paths.get(name)
        if path is not None and path.exists():
            client.log_artifact(run_id, str(path), artifact_path="eval")
    rows = []
    with result.paths["samples"].open(encoding="utf-8") as handle:
        import json

        for line in handle:
            rec = json.loads(line)
            flat = {
                k: rec[k]
                for k in (
                    "suite",
                    "dimension",
                    "sample_id",
                    "repeat",
                    "prompt",
                    "response",
                    "error",
                    "expected_behaviour",
                )
            }
            for metric, value in rec["scores"].items():
                flat[f"score.{metric}"] = value
            for key, value in rec["tags"].items():
                flat[f"tag.{key}"] = value
            rows.append(flat)
    if rows:
        client.log_table(run_id, data=pd.DataFrame(rows), artifact_file="eval/samples_table.json")
    if created:
        client.set_terminated(run_id)
    logger.info("logged evaluation to MLflow run %s (%d metrics)", run_id, len(metrics))
    return run_id
