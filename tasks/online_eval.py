"""Online evaluation tasks: score a window of live traffic, then publish the figures."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task

from loopwright import online_eval_io
from loopwright.config import Settings
from loopwright.online_eval import OnlineEvalConfig, OnlineEvalResult


@task(name="evaluate-live-window")
def evaluate_live_window(
    settings: Settings, config: OnlineEvalConfig, now: datetime | None = None
) -> OnlineEvalResult:
    """Sample and score the shipped traffic of ``[now - lookback_s, now]`` per policy version."""
    result = online_eval_io.evaluate_live(settings, config, now)
    log = get_run_logger()
    log.info("window: %d interactions, %d unrouted", result.interactions, result.unrouted)
    for version, fig in result.versions.items():
        log.info(
            "v%s: %d of %d sampled; harmful %s, reward %s, ungrounded %s, negative ratings %s",
            version,
            fig.sampled,
            fig.total,
            fig.harmful_rate,
            fig.reward_mean,
            fig.ungrounded_rate,
            fig.negative_rating_rate,
        )
    return result


@task(name="log-online-eval", retries=2, retry_delay_seconds=2)
def log_online_eval(settings: Settings, result: OnlineEvalResult) -> str:
    """One MLflow run for the window in ``<app>-online-eval``; returns its run id."""
    run_id = online_eval_io.log_result(settings, result)
    get_run_logger().info("logged to %s, run %s", online_eval_io.experiment_name(settings), run_id)
    return run_id


@task(name="tag-policy-versions", retries=2, retry_delay_seconds=2)
def tag_policy_versions(settings: Settings, result: OnlineEvalResult, run_id: str) -> list[str]:
    """The latest figures as ``online.*`` tags on each evaluated policy version."""
    return online_eval_io.tag_versions(settings, result, run_id)


@task(name="push-online-eval", retries=2, retry_delay_seconds=2)
def push_online_eval(result: OnlineEvalResult, url: str) -> None:
    """The figures as gauges on the Prometheus Pushgateway at ``url``."""
    online_eval_io.push_result(result, url)
    get_run_logger().info("pushed %d versions' figures to %s", len(result.versions), url)
