"""Prometheus metrics of one gateway app (own registry, so several apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAYERS = (
    "auth",
    "rate_limit",
    "validation",
    "input_rails",
    "augment",
    "inference",
    "output_rails",
    "fallback",
    "escalation",
)

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.5,
    5.0,
    10.0,
    20.0,
)


class GatewayMetrics:
    """All gateway metrics in one registry.

    Attributes:
        requests: requests by endpoint and HTTP status.
        verdicts: control-layer verdicts by layer and action (allow, block, redact, flag).
        layer_seconds: time spent in each layer, seconds.
        request_seconds: end-to-end latency by endpoint, seconds.
        tokens: prompt and completion tokens by model version and arm.
        routed: requests by arm and model version.
        fallbacks: fallback answers by reason.
        escalations: interactions sent to the review queue.
        log_records: records written to the spool, by log.
        log_pending_segments: sealed segments waiting to ship, by log.
        log_ship_failures: failed shipping attempts, by log.

    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.verdicts = Counter(
            "gateway_layer_verdicts", "Control-layer verdicts.", ["layer", "action"], registry=r
        )
        self.layer_seconds = Histogram(
            "gateway_layer_seconds",
            "Time spent per control layer.",
            ["layer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "gateway_request_seconds",
            "End-to-end request latency.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens processed.", ["kind", "arm", "version"], registry=r
        )
        self.routed = Counter(
            "gateway_routed",
            "Requests served per arm and version.",
            ["arm", "version"],
            registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Fallback answers by reason.", ["reason"], registry=r
        )
        self.escalations = Counter(
            "gateway_escalations", "Interactions sent to human review.", registry=r
        )
        self.log_records = Counter(
            "gateway_log_records",
            "Records written to the write-ahead spool.",
            ["log"],
            registry=r,
        )
        self.log_pending_segments = Gauge(
            "gateway_log_pending_segments",
            "Sealed log segments waiting to ship.",
            ["log"],
            registry=r,
        )
        self.log_ship_failures = Gauge(
            "gateway_log_ship_failures",
            "Failed shipping attempts since start.",
            ["log"],
            registry=r,
        )
        self.model_swaps = Gauge(
            "gateway_model_swaps", "Route-table swaps since start.", registry=r
        )

    def verdict(self, layer: str, action: str, seconds: float | None = None) -> None:
        """Count one verdict (and the layer's time when given)."""
        self.verdicts.labels(layer, action).inc()
        if seconds is not None:
            self.layer_seconds.labels(layer).observe(seconds)
