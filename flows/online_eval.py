"""Online evaluation flow: after promotion, score what the gateway serves, window by window."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from loopwright.config import Settings
from loopwright.online_eval import OnlineEvalConfig, OnlineEvalResult
from tasks.online_eval import (
    evaluate_live_window,
    log_online_eval,
    push_online_eval,
    tag_policy_versions,
)


@flow(name="online-eval", log_prints=True)
def online_eval_flow(
    settings: Settings, config: OnlineEvalConfig, now: datetime | None = None
) -> OnlineEvalResult:
    """One window of live traffic: per-version figures -> MLflow, registry tags, Prometheus.

    The window is ``[now - lookback_s, now]`` (``now``: the current time when not given).
    The push is skipped when no Pushgateway is configured.
    """
    result = evaluate_live_window(settings, config, now)
    run_id = log_online_eval(settings, result)
    if config.tag_versions:
        tag_policy_versions(settings, result, run_id)
    if config.pushgateway_url:
        push_online_eval(result, config.pushgateway_url)
    return result
