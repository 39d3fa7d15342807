"""Typed settings of the gateway: one nested pydantic model per control layer.

The lead nests :class:`GatewaySettings` in the main config as ``gateway:``. Every model
forbids unknown keys, so a typo in a profile fails with the list of valid names instead of
being ignored. Paths are relative to the run directory the gateway is started with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PiiAction = Literal["allow", "flag", "redact", "block"]
BackendKind = Literal["stub", "hf"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSettings(_Strict):
    """API-key authentication, roles (user, reviewer, admin) and tenants.

    Attributes:
        enabled: off means every request runs as ``anonymous_tenant`` with role user
            (benchmarks only; review and admin endpoints then refuse everyone).
        keys_file: SQLite file holding salted key hashes, relative to the run directory.
        anonymous_tenant: tenant recorded when auth is off.

    """

    enabled: bool = True
    keys_file: str = "gateway/keys.sqlite"
    anonymous_tenant: str = "default"


class RateLimitSettings(_Strict):
    """Per-key token bucket and request size limit.

    Attributes:
        enabled: off disables both the bucket and the size limit.
        requests_per_s: bucket refill rate, requests per second per key (a key may override).
        burst: bucket capacity, requests.
        max_body_bytes: largest accepted request body; larger gets 413.

    """

    enabled: bool = True
    requests_per_s: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)
    max_body_bytes: int = Field(default=64_000, ge=256)


class ValidationSettings(_Strict):
    """Input validation beyond the JSON schema (sizes, counts, characters).

    Attributes:
        max_messages: most messages in one request.
        max_message_chars: most characters in one message.
        max_total_chars: most characters over all messages.
        max_tokens_cap: largest ``max_tokens`` a client may ask for.
        allow_client_system: accept ``system`` messages from clients (they are rail-checked
            like user text and placed after the gateway's own system prompt).

    """

    enabled: bool = True
    max_messages: int = Field(default=32, ge=1)
    max_message_chars: int = Field(default=8_000, ge=1)
    max_total_chars: int = Field(default=16_000, ge=1)
    max_tokens_cap: int = Field(default=512, ge=1)
    allow_client_system: bool = True


class InputRailSettings(_Strict):
    """Input rails: guard classifier and rules, run on normalised text.

    Attributes:
        guard: run the guard classifier (needs a guard backend).
        harmful_threshold: block when P(harmful) is at least this; None uses the guard's
            calibrated threshold (fitted to a benign false-positive budget), else 0.5.
        injection_threshold: the same for P(injection).
        jailbreak_patterns: run the known-jailbreak pattern rules (block on a match).
        self_harm_reply: a blocked request that speaks of suicide or self-harm
            (:func:`loopwright.gateway.rules.mentions_self_harm`) is answered with
            ``fallback.self_harm``, which points to crisis help, instead of the generic
            block reply, and its verdict carries the reason ``self_harm``. It blocks
            nothing itself.
        pii_action: what a PII hit in the input does (redact replaces it before the model
            and in the log).
        decode_base64: decode base64 spans before checking.
        guard_raw_too: when normalisation changed the text, the guard also reads the raw
            text and the more suspicious score counts (a second pass, obfuscated inputs
            only; with a self-normalising guard, only when base64 or percent-encoding was
            decoded).
        max_guard_chars: the guard sees at most this many characters (the tail).

    """

    enabled: bool = True
    guard: bool = True
    harmful_threshold: float | None = Field(default=None, ge=0, le=1)
    injection_threshold: float | None = Field(default=None, ge=0, le=1)
    jailbreak_patterns: bool = True
    self_harm_reply: bool = True
    pii_action: PiiAction = "redact"
    decode_base64: bool = True
    guard_raw_too: bool = True
    max_guard_chars: int = Field(default=1_500, ge=16)


class EncoderSettings(_Strict):
    """Where the guard, the embedder and the knowledge base come from.

    Attributes:
        guard_dir: a guard folder; None loads ``<app>-guard@champion`` from the registry
            (``routing.source=mlflow``) or runs without a guard (rules only).
        embedder_dir: an embedder folder; None uses the embedder's packaged default.
        runtime: ``onnx`` (the fast path) or ``torch``.
        kb_path: JSONL of ``{"id", "text"}`` facts for retrieval; None asks the domain
            (:attr:`GatewaySettings.domain`) for its ``knowledge_facts()``, if it has them.
        max_batch: most texts per encoder call when batching concurrent requests.
        threads: intra-op threads of the guard/embedder session (1 keeps latency steady
            on a shared machine; more helps throughput when cores are free).
        workers: encoder calls that run at once, one thread each. A lone request uses one;
            under concurrent load each worker keeps a core busy, so 2 lets the encoder use
            both cores of a 2-core machine (1 capped the gateway near one core).

    """

    guard_dir: str | None = None
    embedder_dir: str | None = None
    runtime: Literal["onnx", "torch"] = "onnx"
    kb_path: str | None = None
    max_batch: int = Field(default=32, ge=1)
    threads: int = Field(default=1, ge=1, le=64)
    workers: int = Field(default=2, ge=1, le=64)


class SystemPromptSettings(_Strict):
    """The versioned system prompt the gateway puts first in every conversation.

    Unset in the config, the served domain's ``system_prompt()`` supplies it
    (:func:`with_domain_defaults`); these defaults serve a domain without one.
    """

    version: str = Field(default="default-v1", min_length=1)
    text: str = Field(
        default="You are a helpful assistant. Answer briefly and only from known facts.",
        min_length=1,
    )


class AugmentSettings(_Strict):
    """Prompt augmentation: system prompt and retrieval grounding.

    Attributes:
        retrieval: retrieve KB facts through the embedder (ids go into the log).
        top_k: facts retrieved per request.
        min_score: cosine similarity below which a fact is not used.
        inject_context: put the best ``inject_top_k`` retrieved facts into the system
            prompt (:func:`loopwright.grounding.system_with_facts`), so the model has
            today's fact in front of it, also for wording it was not trained on. The
            example policy is trained to read them (``models.grounding``); turn it off
            for a model that was not.
        inject_top_k: how many of the ``top_k`` retrieved facts go into the prompt, best
            first. The example policy reads one: trained with two or three it answered
            held-out wording worse (the extra facts are distractors a 5M-parameter model
            cannot tell apart); all ``top_k`` still go to the log and the grounding rail.
        context_guidance: decode requests that carry injected facts against the same
            request without them (``models.generation.DecodingParams.context_guidance``;
            1 = off; about twice the decode compute for those requests when on), so answers
            follow today's facts over what the model memorised. 1.5 by default; set 1
            where the model is served without the guard's input rail (guidance lowers the
            policy's own refusals of harmful requests), or where decode compute matters
            more than fact-following. See docs/decisions/0007-grounding-and-context-guidance.md.

    """

    enabled: bool = True
    system_prompt: SystemPromptSettings = SystemPromptSettings()
    retrieval: bool = True
    top_k: int = Field(default=3, ge=1, le=32)
    min_score: float = Field(default=0.2, ge=-1, le=1)
    inject_context: bool = True
    inject_top_k: int = Field(default=1, ge=1, le=32)
    context_guidance: float = Field(default=1.5, ge=0, le=10)


class BackendSettings(_Strict):
    """The model backend built for each registered version (or once, in static mode).

    Attributes:
        kind: ``stub`` (deterministic text, for benchmarks and tests) or ``hf`` (a Hugging
            Face causal LM folder through ``models.generation``).
        stub_delay_ms: artificial latency of the stub, milliseconds.
        max_batch: most requests the HF micro-batcher puts in one ``generate`` call.
        batch_wait_ms: how long the micro-batcher waits for company once a request arrives
            while the model is idle; 0 sends immediately.
        torch_threads: torch threads for the HF backend (0 leaves torch's default).
        default_max_tokens: new tokens when the client does not say.

    """

    kind: BackendKind = "stub"
    stub_delay_ms: float = Field(default=0.0, ge=0)
    max_batch: int = Field(default=16, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0)
    torch_threads: int = Field(default=1, ge=0)
    default_max_tokens: int = Field(default=48, ge=1)


class RoutingSettings(_Strict):
    """Champion/canary routing and where models come from.

    Attributes:
        source: ``static`` serves one local model (``static_model_dir`` for hf, nothing for
            stub); ``mlflow`` loads ``<app>-policy`` versions by alias and polls for moves.
        app: application name; the registered model is ``<app>-policy``.
        tracking_uri: MLflow tracking server (``mlflow`` source only; ``loopwright serve``
            fills it from the main config when unset).
        poll_interval_s: seconds between registry polls.
        model_cache_dir: where downloaded versions live, relative to the run directory.
        static_model_dir: HF model folder for the static source with the hf backend.
        timeout_s: inference time limit; beyond it the fallback answers.
        pinned_version: ``mlflow`` source only: serve exactly ``models:/<app>-policy/<v>``
            as the only arm, read no alias and never poll. For judging one registered
            version behind the controls (the offline gate) without moving any alias.
            None (default) follows the ``champion``/``canary`` aliases.

    """

    source: Literal["static", "mlflow"] = "static"
    app: str = "loopwright"
    tracking_uri: str | None = None
    poll_interval_s: float = Field(default=2.0, gt=0)
    model_cache_dir: str = "gateway/models"
    static_model_dir: str | None = None
    timeout_s: float = Field(default=20.0, gt=0)
    pinned_version: str | None = Field(default=None, pattern=r"^[1-9][0-9]*$")

    @model_validator(mode="after")
    def _pin_needs_registry(self) -> RoutingSettings:
        if self.pinned_version is not None and self.source != "mlflow":
            raise ValueError(
                "pinned_version names a registered version, so it needs source=mlflow "
                f"(got source={self.source!r})"
            )
        return self

    @property
    def policy_model_name(self) -> str:
        """Registered model name of the policy."""
        return f"{self.app}-policy"


class OutputRailSettings(_Strict):
    """Output rails: guard on the response, PII leakage, grounding.

    Attributes:
        guard: run the guard on the response; block when P(harmful) >= harmful_threshold
            (None: the guard's calibrated harmful threshold, else 0.5).
        pii_redact: redact emails, phone and card numbers that the user did not write.
        grounding: flag numbers (prices, limits) in the answer that no retrieved fact holds.

    """

    enabled: bool = True
    guard: bool = True
    harmful_threshold: float | None = Field(default=None, ge=0, le=1)
    pii_redact: bool = True
    grounding: bool = True


class FallbackSettings(_Strict):
    """Templated safe answers used when a rail blocks or the model fails.

    Attributes:
        input_blocked: the reply to a request an input rail blocked.
        output_blocked: the reply when an output rail blocked the model's answer.
        model_error: the reply when the model failed or timed out.
        self_harm: the reply to a blocked request that speaks of suicide or self-harm
            (``input_rails.self_harm_reply``): supportive, pointing to crisis help.

    """

    input_blocked: str = (
        "Sorry, I can't help with that request. If you think this is a mistake, "
        "please rephrase or contact support."
    )
    output_blocked: str = "Sorry, I can't share that answer. Please contact support for help."
    self_harm: str = (
        "I'm really sorry you're going through this, and I'm glad you reached out. You don't "
        "have to face it alone: please contact a local crisis line or emergency services, "
        "or talk to someone you trust right now."
    )
    model_error: str = (
        "Sorry, I can't answer right now. Please try again in a moment or contact support."
    )


class EscalationSettings(_Strict):
    """Which interactions enter the human review queue.

    Attributes:
        on_flag: any rail flagged the interaction (e.g. a grounding doubt).
        on_output_block: an output rail blocked the model's answer.
        on_input_block: an input rail blocked the request (noisy under attack traffic).
        on_self_harm: a blocked request spoke of suicide or self-harm
            (``input_rails.self_harm_reply``): a person should see it whatever
            ``on_input_block`` says.
        on_model_error: the model failed or timed out.
        queue_file: SQLite file of the queue, relative to the run directory.

    """

    enabled: bool = True
    on_flag: bool = True
    on_output_block: bool = True
    on_input_block: bool = False
    on_self_harm: bool = True
    on_model_error: bool = True
    queue_file: str = "gateway/review.sqlite"


class LogSettings(_Strict):
    """The interaction and feedback log: local write-ahead spool shipped to the object store.

    Attributes:
        spool_dir: local spool, relative to the run directory.
        store_uri: ``s3://bucket/prefix`` or ``file:///path``; None keeps segments local.
        segment_max_records: a segment is sealed after this many records.
        segment_max_age_s: or after this many seconds since its first record.
        ship_interval_s: seconds between shipping attempts (and the retry delay).
        keep_shipped: keep local segment files after shipping (else delete them).

    """

    spool_dir: str = "gateway/spool"
    store_uri: str | None = None
    segment_max_records: int = Field(default=5_000, ge=1)
    segment_max_age_s: float = Field(default=30.0, gt=0)
    ship_interval_s: float = Field(default=2.0, gt=0)
    keep_shipped: bool = False


class AlertSettings(_Strict):
    """Alert intake (:mod:`loopwright.gateway.alerts`).

    Attributes:
        prefect_api_url: the Prefect API firing alerts are sent to as events
            (``loopwright serve`` fills it from the main config); None: the alert
            endpoints answer 503.
        state_file: the alerts already forwarded, relative to the run directory.
        review_tenant: the tenant whose reviewers get a review item per forwarded alert
            (what fired, what the automation does about it); None: no review items.

    """

    prefect_api_url: str | None = None
    state_file: str = "gateway/alerts_forwarded.jsonl"
    review_tenant: str | None = "ops"


class GatewaySettings(_Strict):
    """All gateway settings; each control layer can be switched off on its own.

    ``domain`` is the served domain (a domain folder or ``package.module:attribute``, see
    :mod:`loopwright.domain`); under the main config it is filled from the main config's
    ``domain``. It supplies the knowledge base when ``encoders.kb_path`` is not set and the
    system prompt when ``augment.system_prompt`` is not set (:func:`with_domain_defaults`).
    """

    domain: str | None = Field(default=None, min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8400, ge=1, le=65535)
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    validation: ValidationSettings = ValidationSettings()
    input_rails: InputRailSettings = InputRailSettings()
    encoders: EncoderSettings = EncoderSettings()
    augment: AugmentSettings = AugmentSettings()
    backend: BackendSettings = BackendSettings()
    routing: RoutingSettings = RoutingSettings()
    output_rails: OutputRailSettings = OutputRailSettings()
    fallback: FallbackSettings = FallbackSettings()
    escalation: EscalationSettings = EscalationSettings()
    log: LogSettings = LogSettings()
    alerts: AlertSettings = AlertSettings()

    def layers_off(self) -> GatewaySettings:
        """The same settings with every optional control layer switched off (for baselines)."""
        return self.model_copy(
            update={
                "auth": self.auth.model_copy(update={"enabled": False}),
                "rate_limit": self.rate_limit.model_copy(update={"enabled": False}),
                "validation": self.validation.model_copy(update={"enabled": False}),
                "input_rails": self.input_rails.model_copy(update={"enabled": False}),
                "augment": self.augment.model_copy(update={"enabled": False}),
                "output_rails": self.output_rails.model_copy(update={"enabled": False}),
                "escalation": self.escalation.model_copy(update={"enabled": False}),
            }
        )


def with_domain_defaults(settings: GatewaySettings) -> GatewaySettings:
    """``settings`` with what the config leaves unset filled from the served domain.

    Filled: ``augment.system_prompt`` from the domain's optional ``system_prompt()`` hook,
    when the config does not set it (a set one always wins).

    Raises:
        loopwright.domain.DomainError: ``domain`` cannot be loaded.
    """
    if settings.domain is None or "system_prompt" in settings.augment.model_fields_set:
        return settings
    from loopwright.domain import load_domain

    provider = getattr(load_domain(settings.domain), "system_prompt", None)
    if not callable(provider):
        return settings
    version, text = provider()
    prompt = SystemPromptSettings(version=version, text=text)
    augment = settings.augment.model_copy(update={"system_prompt": prompt})
    return settings.model_copy(update={"augment": augment})
