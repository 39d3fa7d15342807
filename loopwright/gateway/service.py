"""The gateway runtime: its components and the chat pipeline, layer by layer.

Order of the control layers (DESIGN.md): authentication and rate/size limits (in the
middleware, before the body is parsed) -> input validation -> input rails -> prompt
augmentation -> inference on champion or canary -> output rails -> fallback / escalation
-> interaction log. Each layer records a :class:`~loopwright.records.RailVerdict`-style
decision (action, scores, reasons) in the request context, counts it in Prometheus and
logs it; the interaction record carries the merged input and output verdicts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from loopwright.gateway import rules
from loopwright.gateway.backends import Generation, build_backend
from loopwright.gateway.encoders import EncoderService, GuardLike
from loopwright.gateway.keys import KeyStore, Principal
from loopwright.gateway.metrics import GatewayMetrics
from loopwright.gateway.normalize import normalise
from loopwright.gateway.ratelimit import TokenBuckets
from loopwright.gateway.review import ReviewQueue
from loopwright.gateway.routing import (
    Loader,
    NoModelError,
    RegistryPoller,
    Router,
    RouteTable,
    ServedModel,
    mlflow_loader,
    pinned_table,
)
from loopwright.gateway.schemas import ChatCompletionRequest
from loopwright.gateway.settings import GatewaySettings
from loopwright.gateway.spool import ObjectStoreLike, Spool
from loopwright.grounding import EmbedderLike, Fact, KnowledgeIndex, system_with_facts
from loopwright.records import FeedbackEvent, Interaction, Message, RailVerdict
from models.generation import DecodingParams

logger = logging.getLogger(__name__)

_ACTION_RANK = {"allow": 0, "redact": 1, "flag": 2, "block": 3}
UNAUTHENTICATED = "unauthenticated"
SELF_HARM_REASON = "self_harm"
"""Input-verdict reason of a blocked request that speaks of suicide or self-harm."""


class ApiError(Exception):
    """A request refused with a 4xx; ``message`` says what is wrong (sent to the client).

    Attributes:
        status: HTTP status.
        kind: OpenAI-style error type, e.g. ``invalid_request_error``.
        param: the offending field path, when there is one.
        reason: machine-readable verdict reason, e.g. ``validation:control_char``.
        headers: extra response headers (``Retry-After``).

    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        reason: str = "rejected",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.reason = reason
        self.headers = headers or {}


def merge_verdicts(*verdicts: RailVerdict) -> RailVerdict:
    """One verdict from several.

    The strongest action wins (block > flag > redact > allow); scores and reasons are kept
    in order.
    """
    action = "allow"
    scores: dict[str, float] = {}
    reasons: list[str] = []
    for v in verdicts:
        if _ACTION_RANK[v.action] > _ACTION_RANK[action]:
            action = v.action
        scores.update(v.scores)
        reasons.extend(v.reasons)
    return RailVerdict(action=action, scores=scores, reasons=reasons)  # type: ignore[arg-type]


def _safe_text(text: str) -> str:
    """Text that encodes as UTF-8 (lone surrogates replaced), for the log."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


@dataclass
class RequestContext:
    """Everything one request accumulates on its way through the layers (then logged)."""

    interaction_id: str
    endpoint: str
    started: float
    timestamp: datetime
    principal: Principal | None = None
    tenant: str = UNAUTHENTICATED
    user_hash: str = ""
    session_id: str | None = None
    messages: list[Message] = field(default_factory=list)
    model_name: str | None = None
    model_version: str | None = None
    route: str = "none"
    system_prompt_version: str | None = None
    retrieved_context_ids: list[str] = field(default_factory=list)
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status_code: int = 200
    input_verdicts: list[RailVerdict] = field(default_factory=list)
    output_verdicts: list[RailVerdict] = field(default_factory=list)
    fallback_used: bool = False
    escalated: bool = False
    error: str | None = None
    finished: bool = False

    def interaction(self, latency_ms: float) -> Interaction:
        """The log record of this request."""
        return Interaction(
            id=self.interaction_id,
            timestamp=self.timestamp,
            tenant=self.tenant,
            user_hash=self.user_hash,
            session_id=self.session_id,
            model_name=self.model_name,
            model_version=self.model_version,
            route=self.route,  # type: ignore[arg-type]
            system_prompt_version=self.system_prompt_version,
            messages=self.messages,
            retrieved_context_ids=self.retrieved_context_ids,
            response=None if self.response is None else _safe_text(self.response),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=max(0.0, latency_ms),
            status_code=self.status_code,
            input_verdict=merge_verdicts(*self.input_verdicts),
            output_verdict=merge_verdicts(*self.output_verdicts),
            fallback_used=self.fallback_used,
            escalated=self.escalated,
            error=None if self.error is None else _safe_text(self.error)[:2_000],
        )


@dataclass(frozen=True)
class ChatOutcome:
    """What the chat pipeline answers (the route turns it into JSON or SSE)."""

    interaction_id: str
    text: str
    finish_reason: str
    model: str
    fingerprint: str
    prompt_tokens: int
    completion_tokens: int
    created: int


def user_hash(tenant: str, user: str) -> str:
    """Pseudonymous user id: first 16 hex digits of SHA-256 over tenant and user."""
    return hashlib.sha256(f"{tenant}\x1f{user}".encode()).hexdigest()[:16]


class IdSigner:
    """Interaction ids that prove which tenant they were issued to.

    An id is ``chatcmpl-<24 random hex><16 hex HMAC(tenant, random)>``: feedback can check
    that an id belongs to the caller's tenant without any lookup, across restarts.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> IdSigner:
        """Load the secret, creating it (mode 0600) on first use."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            os.replace(tmp, path)
        return cls(bytes.fromhex(path.read_text().strip()))

    def _sig(self, tenant: str, nonce: str) -> str:
        return hmac.new(self._secret, f"{tenant}:{nonce}".encode(), hashlib.sha256).hexdigest()[:16]

    def new_id(self, tenant: str, prefix: str = "chatcmpl-") -> str:
        """A fresh id bound to ``tenant``."""
        nonce = secrets.token_hex(12)
        return f"{prefix}{nonce}{self._sig(tenant, nonce)}"

    def rebind(self, interaction_id: str, tenant: str) -> str:
        """The same nonce re-signed for ``tenant`` (after authentication names the tenant)."""
        prefix, body = interaction_id.split("-", 1)
        return f"{prefix}-{body[:24]}{self._sig(tenant, body[:24])}"

    def belongs(self, interaction_id: str, tenant: str) -> bool:
        """Whether ``interaction_id`` was issued to ``tenant``."""
        if "-" not in interaction_id:
            return False
        body = interaction_id.split("-", 1)[1]
        if len(body) != 40:
            return False
        return hmac.compare_digest(body[24:], self._sig(tenant, body[:24]))


def _control_char(text: str) -> tuple[int, str] | None:
    """Position and code of the first disallowed character, else None.

    Disallowed: C0/C1 controls except tab, newline and carriage return; DEL; unpaired
    surrogates.
    """
    for i, char in enumerate(text):
        code = ord(char)
        if char in "\t\n\r":
            continue
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return i, f"U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return i, f"U+{code:04X} (unpaired surrogate)"
        if unicodedata.category(char) == "Cn" and code > 0xFFFF and code >= 0xF0000:
            return i, f"U+{code:04X} (private use)"
    return None


class Gateway:
    """All components of one gateway and the chat pipeline.

    Args:
        settings: typed settings.
        run_dir: where keys, the review queue, the spool and model caches live.
        guard: guard classifier (needed when the guard rails are on).
        embedder: embedder (needed for retrieval).
        facts: knowledge-base facts for retrieval grounding.
        store: object store for shipping logs (with ``settings.log.store_uri``).
        registry_client: an ``mlflow.MlflowClient`` (mlflow routing; built from the
            settings when None).
        static_backend: serve this backend instead of building one (static routing).

    """

    def __init__(
        self,
        settings: GatewaySettings,
        run_dir: str | Path,
        *,
        guard: GuardLike | None = None,
        embedder: EmbedderLike | None = None,
        facts: Sequence[Fact] | None = None,
        store: ObjectStoreLike | None = None,
        registry_client: object | None = None,
        static_backend: Any | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        s = settings
        self.metrics = GatewayMetrics()
        self.keys = KeyStore(self.run_dir / s.auth.keys_file)
        self.ids = IdSigner.from_file(self.run_dir / "gateway" / "id_secret")
        self.buckets = TokenBuckets(s.rate_limit.requests_per_s, s.rate_limit.burst)
        self.review = ReviewQueue(self.run_dir / s.escalation.queue_file)
        needs_guard = s.input_rails.enabled and s.input_rails.guard
        needs_guard = needs_guard or (s.output_rails.enabled and s.output_rails.guard)
        self.guard = guard
        self.embedder = embedder
        calibrated: dict[str, float] = dict(getattr(guard, "thresholds", {}) or {})
        self.guard_normalises = bool(getattr(guard, "normalize", False))
        ir, orr = s.input_rails, s.output_rails

        def pick(explicit: float | None, label: str) -> float:
            return explicit if explicit is not None else calibrated.get(label, 0.5)

        self.thresholds = {
            "harmful": pick(ir.harmful_threshold, "harmful"),
            "injection": pick(ir.injection_threshold, "injection"),
            "harmful_response": pick(orr.harmful_threshold, "harmful"),
        }
        if needs_guard and guard is None:
            logger.warning("guard rails are on but no guard is loaded: rules only")
        self.encoders = EncoderService(
            guard, embedder, max_batch=s.encoders.max_batch, workers=s.encoders.workers
        )
        self.index: KnowledgeIndex | None = None
        if facts and embedder is not None:
            self.index = KnowledgeIndex.build(list(facts), embedder)
        elif s.augment.enabled and s.augment.retrieval:
            logger.warning("retrieval is on but no embedder/facts are loaded: no grounding")
        self.router = Router()
        self.poller: RegistryPoller | None = None
        self._pinned_loader: Loader | None = None
        self.model_name = s.routing.policy_model_name
        if s.routing.source == "mlflow":
            if not s.routing.tracking_uri:
                raise ValueError("routing.source=mlflow needs routing.tracking_uri")
            loader = mlflow_loader(
                s.routing.tracking_uri,
                self.run_dir / s.routing.model_cache_dir,
                s.backend.kind,
                s.backend,
            )
            if s.routing.pinned_version is not None:
                self._pinned_loader = loader  # loaded in start(); no alias is ever read
            else:
                if registry_client is None:
                    from mlflow import MlflowClient

                    registry_client = MlflowClient(tracking_uri=s.routing.tracking_uri)
                self.poller = RegistryPoller(
                    self.router, registry_client, self.model_name, loader, s.routing.poll_interval_s
                )
        else:
            backend = static_backend
            if backend is None:
                folder = Path(s.routing.static_model_dir) if s.routing.static_model_dir else None
                backend = build_backend(
                    s.backend.kind, folder, self.model_name, "static", s.backend
                )
            self.model_name = backend.name
            self.router.swap(RouteTable(ServedModel(backend, backend.name, backend.version)))
        spool_dir = self.run_dir / s.log.spool_dir
        store_uri = s.log.store_uri if store is not None else None

        def spool(kind: str) -> Spool:
            return Spool(
                spool_dir / kind,
                kind=kind,
                store=store,
                store_uri=store_uri,
                max_records=s.log.segment_max_records,
                max_age_s=s.log.segment_max_age_s,
                keep_shipped=s.log.keep_shipped,
            )

        self.interaction_log = spool("interactions")
        self.feedback_log = spool("feedback")
        # One writer thread keeps appends ordered and off the event loop.
        self._log_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log")
        self._io_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-io")
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Load the first models (mlflow routing) and start the background threads.

        Raises:
            Exception: a pinned version (``routing.pinned_version``) cannot be loaded.

        """
        if self._pinned_loader is not None and self.router.table.champion is None:
            version = self.settings.routing.pinned_version
            assert version is not None
            self.router.swap(pinned_table(self._pinned_loader, self.model_name, version))
        if self.poller is not None:
            self.poller.poll_once()
            self.poller.start()
        self.interaction_log.start(self.settings.log.ship_interval_s)
        self.feedback_log.start(self.settings.log.ship_interval_s)
        self.started = True

    def stop(self) -> None:
        """Stop polling, seal and ship the logs, release models and files."""
        if self.poller is not None:
            self.poller.stop()
        # Pending log writes first: a write queued after its spool closed would open a
        # segment nobody seals until the next start.
        self._log_executor.shutdown(wait=True)
        self.interaction_log.close()
        self.feedback_log.close()
        self._io_executor.shutdown(wait=True)
        self.encoders.close()
        self.router.swap(RouteTable(champion=None))
        self.review.close()
        self.keys.close()
        self.started = False

    def problems(self) -> list[str]:
        """Why the gateway is not ready (empty when ready)."""
        out = []
        if not self.started:
            out.append("not started")
        if self.router.table.champion is None:
            why = self.poller.last_error if self.poller and self.poller.last_error else ""
            out.append(f"no champion model loaded {why}".strip())
        return out

    # -- per request -------------------------------------------------------------------

    def new_context(self, endpoint: str) -> RequestContext:
        """A fresh context (the interaction id is re-signed once the tenant is known)."""
        return RequestContext(
            interaction_id=self.ids.new_id(UNAUTHENTICATED),
            endpoint=endpoint,
            started=time.perf_counter(),
            timestamp=datetime.now(UTC),
        )

    def authenticate(self, ctx: RequestContext, authorization: str | None) -> None:
        """Auth layer: set the principal or raise 401.

        Raises:
            ApiError: 401 with what was wrong (missing, malformed, unknown or revoked key).

        """
        t0 = time.perf_counter()
        s = self.settings.auth
        if not s.enabled:
            principal = Principal(key_id="anonymous", tenant=s.anonymous_tenant, role="user")
        else:
            if not authorization:
                self._deny(ctx, "auth", "auth:missing_key", t0)
                raise ApiError(
                    401,
                    "missing API key: send 'Authorization: Bearer <key>'",
                    kind="authentication_error",
                    reason="auth:missing_key",
                )
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self._deny(ctx, "auth", "auth:malformed", t0)
                raise ApiError(
                    401,
                    "malformed Authorization header: expected 'Bearer <key>'",
                    kind="authentication_error",
                    reason="auth:malformed",
                )
            found = self.keys.verify(token.strip())
            if found is None:
                self._deny(ctx, "auth", "auth:invalid_key", t0)
                raise ApiError(
                    401,
                    "invalid or revoked API key",
                    kind="authentication_error",
                    reason="auth:invalid_key",
                )
            principal = found
        ctx.principal = principal
        ctx.tenant = principal.tenant
        ctx.user_hash = user_hash(principal.tenant, principal.key_id)
        ctx.interaction_id = self.ids.rebind(ctx.interaction_id, principal.tenant)
        self.metrics.verdict("auth", "allow", time.perf_counter() - t0)

    def authorize(self, ctx: RequestContext, needed: str) -> None:
        """Role check for review (reviewer) and admin (admin) endpoints.

        Raises:
            ApiError: 403 naming the role needed.

        """
        principal = ctx.principal
        if principal is None or not self.settings.auth.enabled or not principal.can(needed):  # type: ignore[arg-type]
            role = principal.role if principal else "none"
            self._deny(ctx, "auth", f"auth:role_{needed}_required", None)
            raise ApiError(
                403,
                f"this endpoint needs role '{needed}'; your key has '{role}'",
                kind="permission_error",
                reason=f"auth:role_{needed}_required",
            )

    def rate_limit(self, ctx: RequestContext) -> None:
        """Token bucket per key.

        Raises:
            ApiError: 429 with ``Retry-After``.

        """
        if not self.settings.rate_limit.enabled or ctx.principal is None:
            return
        t0 = time.perf_counter()
        decision = self.buckets.take(ctx.principal.key_id, ctx.principal.requests_per_s)
        if not decision.allowed:
            self._deny(ctx, "rate_limit", "rate_limit:exceeded", t0)
            raise ApiError(
                429,
                f"rate limit exceeded for key {ctx.principal.key_id}: retry after "
                f"{decision.retry_after_header} s",
                kind="rate_limit_error",
                reason="rate_limit:exceeded",
                headers={"Retry-After": decision.retry_after_header},
            )
        self.metrics.verdict("rate_limit", "allow", time.perf_counter() - t0)

    def _deny(self, ctx: RequestContext, layer: str, reason: str, t0: float | None) -> None:
        ctx.input_verdicts.append(RailVerdict(action="block", reasons=[reason]))
        ctx.error = reason
        self.metrics.verdict(layer, "block", None if t0 is None else time.perf_counter() - t0)
        logger.info("layer %s blocked %s: %s", layer, ctx.interaction_id, reason)

    def reject(self, ctx: RequestContext, layer: str, reason: str, message: str) -> None:
        """Record a refusal by ``layer`` (the caller answers 4xx)."""
        ctx.input_verdicts.append(RailVerdict(action="block", reasons=[reason]))
        ctx.error = message
        self.metrics.verdict(layer, "block")

    async def finish(self, ctx: RequestContext) -> None:
        """Write the interaction record once (chat endpoint) and count the request."""
        if ctx.finished:
            return
        ctx.finished = True
        latency = time.perf_counter() - ctx.started
        self.metrics.requests.labels(ctx.endpoint, str(ctx.status_code)).inc()
        self.metrics.request_seconds.labels(ctx.endpoint).observe(latency)
        if ctx.endpoint != "chat":
            return
        await self._append_log(self.interaction_log, ctx.interaction(latency * 1000))

    async def log_feedback(self, event: FeedbackEvent) -> None:
        """Append a feedback event to the feedback spool (durable on return)."""
        await self._append_log(self.feedback_log, event)

    async def _append_log(self, spool: Spool, record: BaseModel) -> None:
        """Write one record to a spool off the event loop; durable on return.

        The write survives the caller's cancellation: a client that hangs up right after
        the last SSE event cancels the request's task, and a plain ``await`` of
        ``run_in_executor`` would pass that cancel on to the queued write (asyncio chains
        it to the executor job), losing the record (measured: 4 of 300 streamed requests).
        """
        line = record.model_dump_json()

        def write() -> None:
            spool.append(line)
            self.metrics.log_records.labels(spool.kind).inc()

        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(self._log_executor, write))

    # -- chat pipeline -----------------------------------------------------------------

    def _validate(self, ctx: RequestContext, req: ChatCompletionRequest) -> None:
        t0 = time.perf_counter()
        s = self.settings.validation
        if req.model not in self.model_names():
            raise ApiError(
                404,
                f"model {req.model!r} not found; available: {', '.join(self.model_names())}",
                param="model",
                kind="not_found_error",
                reason="validation:unknown_model",
            )
        if not s.enabled:
            return
        if len(req.messages) > s.max_messages:
            raise ApiError(
                422,
                f"too many messages: {len(req.messages)} > {s.max_messages}",
                param="messages",
                reason="validation:message_count",
            )
        total = 0
        for i, message in enumerate(req.messages):
            text = message.text()
            total += len(text)
            where = f"messages[{i}].content"
            if len(text) > s.max_message_chars:
                raise ApiError(
                    422,
                    f"{where} is too long: {len(text)} characters > {s.max_message_chars}",
                    param=where,
                    reason="validation:message_size",
                )
            bad = _control_char(text)
            if bad is not None:
                raise ApiError(
                    422,
                    f"{where} contains a disallowed control character "
                    f"{bad[1]} at position {bad[0]}",
                    param=where,
                    reason="validation:control_char",
                )
            if message.role in ("system", "developer") and not s.allow_client_system:
                raise ApiError(
                    422,
                    f"messages[{i}].role: client system messages are not allowed here",
                    param=f"messages[{i}].role",
                    reason="validation:client_system",
                )
        if total > s.max_total_chars:
            raise ApiError(
                422,
                f"messages are too long together: {total} characters > {s.max_total_chars}",
                param="messages",
                reason="validation:total_size",
            )
        if not any(m.role == "user" for m in req.messages):
            raise ApiError(
                422,
                "messages need at least one message with role 'user'",
                param="messages",
                reason="validation:no_user_message",
            )
        if req.messages[-1].role == "assistant":
            raise ApiError(
                422,
                "the last message must not be from the assistant",
                param="messages",
                reason="validation:last_is_assistant",
            )
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted is not None and wanted > s.max_tokens_cap:
            raise ApiError(
                422,
                f"max_tokens {wanted} exceeds the limit {s.max_tokens_cap}",
                param="max_tokens",
                reason="validation:max_tokens",
            )
        self.metrics.verdict("validation", "allow", time.perf_counter() - t0)

    def model_names(self) -> list[str]:
        """Model ids clients may ask for."""
        return [self.model_name]

    async def _input_rails(
        self, ctx: RequestContext, messages: list[dict[str, str]], want_vector: bool
    ) -> tuple[RailVerdict, list[dict[str, str]], np.ndarray | None]:
        s = self.settings.input_rails
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not s.enabled:
            vector = None
            if want_vector:
                _, vector = await self.encoders.analyse(
                    normalise(last_user).text, scores=False, vector=True
                )
            return RailVerdict(), messages, vector
        t0 = time.perf_counter()
        reasons: list[str] = []
        scores: dict[str, float] = {}
        action = "allow"
        client = [m for m in messages if m["role"] in ("user", "system")]
        views = [normalise(m["content"], s.decode_base64) for m in client]
        for view in views:
            reasons.extend(
                f"normalise:{step}" for step in view.steps if f"normalise:{step}" not in reasons
            )
        if s.jailbreak_patterns:
            found = sorted({name for v in views for name in rules.find_jailbreaks(v.pattern_text)})
            if found:
                action = "block"
                reasons.extend(f"jailbreak:{name}" for name in found)
        out_messages = messages
        if s.pii_action != "allow":
            hits_per = [rules.find_pii(m["content"]) for m in messages]
            hidden = [h for v in views for h in rules.find_pii(v.text)]
            kinds = sorted({h.kind for hits in hits_per for h in hits} | {h.kind for h in hidden})
            if kinds:
                reasons.extend(f"pii:{kind}" for kind in kinds)
                if s.pii_action == "block":
                    action = "block"
                elif s.pii_action == "flag" and action == "allow":
                    action = "flag"
                elif s.pii_action == "redact":
                    out_messages = [
                        {**m, "content": rules.redact(m["content"], hits)} if hits else m
                        for m, hits in zip(messages, hits_per, strict=True)
                    ]
                    if action == "allow":
                        action = "redact"
        vector = None
        query_text = normalise(last_user, s.decode_base64).text
        run_guard = s.guard and self.guard is not None and action != "block"
        if run_guard:
            guard_text = "\n".join(v.text for v in views)[-s.max_guard_chars :]
            raw_text = "\n".join(m["content"] for m in client)[-s.max_guard_chars :]
            joint = want_vector and guard_text == query_text[-s.max_guard_chars :]
            decoded = any(v.steps and {"base64", "percent"} & set(v.steps) for v in views)
            # A guard that folds look-alikes and invisible characters itself only needs the
            # raw view when we decoded something it cannot (base64, percent-encoding).
            need_raw = (
                s.guard_raw_too
                and raw_text != guard_text
                and (decoded or not self.guard_normalises)
            )
            if not need_raw:
                guard_scores, vector = await self.encoders.analyse(
                    guard_text, scores=True, vector=joint
                )
            else:
                # Obfuscated input: the guard also learned the obfuscations themselves as a
                # signal, so it reads both views and the more suspicious score counts.
                (guard_scores, vector), (raw_scores, _) = await asyncio.gather(
                    self.encoders.analyse(guard_text, scores=True, vector=joint),
                    self.encoders.analyse(raw_text, scores=True, vector=False),
                )
                assert guard_scores is not None and raw_scores is not None
                guard_scores = {
                    k: max(v, raw_scores.get(k, 0.0))
                    if k != "benign"
                    else min(v, raw_scores.get(k, 1.0))
                    for k, v in guard_scores.items()
                }
            assert guard_scores is not None
            scores = {f"guard_{k}": round(float(v), 5) for k, v in guard_scores.items()}
            if guard_scores.get("harmful", 0.0) >= self.thresholds["harmful"]:
                action = "block"
                reasons.append("guard:harmful")
            if guard_scores.get("injection", 0.0) >= self.thresholds["injection"]:
                action = "block"
                reasons.append("guard:injection")
        if (
            action == "block"
            and s.self_harm_reply
            and any(rules.mentions_self_harm(v.pattern_text) for v in views)
        ):
            reasons.append(SELF_HARM_REASON)
        if want_vector and vector is None and action != "block":
            _, vector = await self.encoders.analyse(query_text, scores=False, vector=True)
        verdict = RailVerdict(action=action, scores=scores, reasons=reasons)  # type: ignore[arg-type]
        self.metrics.verdict("input_rails", action, time.perf_counter() - t0)
        if action != "allow":
            logger.info("input rails %s %s: %s", action, ctx.interaction_id, reasons)
        return verdict, out_messages, vector

    def _augment(
        self, ctx: RequestContext, messages: list[dict[str, str]], vector: np.ndarray | None
    ) -> tuple[list[dict[str, str]], list[Fact]]:
        s = self.settings.augment
        if not s.enabled:
            return messages, []
        t0 = time.perf_counter()
        facts: list[Fact] = []
        if s.retrieval and self.index is not None and vector is not None:
            hits = self.index.search(vector, s.top_k, s.min_score)
            facts = [fact for fact, _ in hits]
            ctx.retrieved_context_ids = [fact.id for fact in facts]
        system = s.system_prompt.text
        if s.inject_context:
            system = system_with_facts(system, [f.text for f in facts[: s.inject_top_k]])
        ctx.system_prompt_version = s.system_prompt.version
        out = [{"role": "system", "content": system}, *messages]
        self.metrics.verdict("augment", "allow", time.perf_counter() - t0)
        return out, facts

    async def _output_rails(
        self, ctx: RequestContext, text: str, facts: list[Fact], prompt: str
    ) -> tuple[RailVerdict, str]:
        s = self.settings.output_rails
        if not s.enabled:
            return RailVerdict(), text
        t0 = time.perf_counter()
        action = "allow"
        reasons: list[str] = []
        scores: dict[str, float] = {}
        if s.guard and self.guard is not None and text.strip():
            guard_scores, _ = await self.encoders.analyse(
                normalise(text).text, scores=True, vector=False
            )
            assert guard_scores is not None
            scores["guard_harmful"] = round(float(guard_scores.get("harmful", 0.0)), 5)
            if guard_scores.get("harmful", 0.0) >= self.thresholds["harmful_response"]:
                action = "block"
                reasons.append("guard:harmful_response")
        if s.pii_redact and action != "block":
            prompt_pii = {h.text for h in rules.find_pii(prompt)}
            leaked = [h for h in rules.find_pii(text) if h.text not in prompt_pii]
            if leaked:
                text = rules.redact(text, leaked)
                action = "redact"
                reasons.extend(sorted({f"pii_leak:{h.kind}" for h in leaked}))
        if (
            s.grounding
            and action != "block"
            and self.settings.augment.enabled
            and self.settings.augment.retrieval
            and self.index is not None
        ):
            unsupported = rules.unsupported_numbers(text, [f.text for f in facts], prompt)
            if unsupported:
                action = "flag" if action == "allow" else action
                reasons.append("grounding:unsupported_figures")
                reasons.extend(f"grounding:figure:{n}" for n in unsupported[:5])
                if action == "redact":
                    # Redaction happened too; the figures still go to review.
                    reasons.append("grounding:flag")
        verdict = RailVerdict(action=action, scores=scores, reasons=reasons)  # type: ignore[arg-type]
        self.metrics.verdict("output_rails", action, time.perf_counter() - t0)
        if action != "allow":
            logger.info("output rails %s %s: %s", action, ctx.interaction_id, reasons)
        return verdict, text

    def _fallback(self, ctx: RequestContext, reason: str) -> str:
        f = self.settings.fallback
        text = {
            "input_blocked": f.input_blocked,
            "output_blocked": f.output_blocked,
            "self_harm": f.self_harm,
        }.get(reason, f.model_error)
        ctx.fallback_used = True
        self.metrics.fallbacks.labels(reason).inc()
        self.metrics.verdict("fallback", "block")
        return text

    async def _escalate(
        self, ctx: RequestContext, kind: str, messages: list[dict[str, str]]
    ) -> None:
        s = self.settings.escalation
        if not s.enabled:
            return
        wanted = {
            "flag": s.on_flag,
            "output_block": s.on_output_block,
            "input_block": s.on_input_block,
            "self_harm": s.on_self_harm,
            "model_error": s.on_model_error,
        }[kind]
        if not wanted:
            return
        t0 = time.perf_counter()
        verdict_in = merge_verdicts(*ctx.input_verdicts)
        verdict_out = merge_verdicts(*ctx.output_verdicts)
        payload = {
            "messages": messages,
            "response": ctx.response,
            "model_name": ctx.model_name,
            "model_version": ctx.model_version,
            "route": ctx.route,
            "retrieved_context_ids": ctx.retrieved_context_ids,
            "input_verdict": verdict_in.model_dump(),
            "output_verdict": verdict_out.model_dump(),
            "error": ctx.error,
        }
        reasons = [f"escalate:{kind}", *verdict_in.reasons, *verdict_out.reasons]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._io_executor, self.review.enqueue, ctx.interaction_id, ctx.tenant, reasons, payload
        )
        ctx.escalated = True
        self.metrics.escalations.inc()
        self.metrics.verdict("escalation", "flag", time.perf_counter() - t0)

    async def chat(self, ctx: RequestContext, req: ChatCompletionRequest) -> ChatOutcome:
        """Run a validated chat request through every layer after authentication.

        Raises:
            ApiError: 4xx from input validation (other failures become fallbacks).

        """
        created = int(time.time())
        ctx.session_id = (req.metadata or {}).get("session_id")
        principal = ctx.principal
        key_id = principal.key_id if principal else "anonymous"
        end_user = req.user or key_id
        ctx.user_hash = user_hash(ctx.tenant, end_user)
        messages = [{"role": m.plain_role(), "content": m.text()} for m in req.messages]
        ctx.messages = [
            Message(role=m["role"], content=_safe_text(m["content"]))  # type: ignore[arg-type]
            for m in messages
        ]
        self._validate(ctx, req)
        wanted = req.max_completion_tokens or req.max_tokens
        cap = self.settings.validation.max_tokens_cap
        max_new = min(wanted or self.settings.backend.default_max_tokens, cap)
        a = self.settings.augment
        params = DecodingParams(
            max_new_tokens=max_new,
            temperature=req.temperature or 0.0,
            top_p=req.top_p or 1.0,
            seed=req.seed or 0,
            context_guidance=a.context_guidance if a.enabled else 1.0,
        )
        want_vector = a.enabled and a.retrieval and self.index is not None
        verdict, model_messages, vector = await self._input_rails(ctx, messages, want_vector)
        ctx.input_verdicts.append(verdict)
        if model_messages is not messages:  # PII was redacted (whatever else was decided)
            ctx.messages = [
                Message(role=m["role"], content=_safe_text(m["content"]))  # type: ignore[arg-type]
                for m in model_messages
            ]
        fingerprint = f"{self.model_name}@none/none"
        if verdict.action == "block":
            self_harm = SELF_HARM_REASON in verdict.reasons
            text = self._fallback(ctx, "self_harm" if self_harm else "input_blocked")
            ctx.response, ctx.finish_reason = text, "content_filter"
            await self._escalate(ctx, "self_harm" if self_harm else "input_block", model_messages)
            return ChatOutcome(
                ctx.interaction_id,
                text,
                "content_filter",
                self.model_name,
                fingerprint,
                0,
                0,
                created,
            )
        conversation, facts = self._augment(ctx, model_messages, vector)
        prompt_text = "\n".join(m["content"] for m in model_messages)
        t0 = time.perf_counter()
        generation: Generation | None = None
        try:
            with self.router.lease(f"{ctx.tenant}\x1f{end_user}") as (served, arm):
                ctx.model_name, ctx.model_version, ctx.route = served.name, served.version, arm
                fingerprint = f"{served.name}@{served.version}/{arm}"
                generation = await asyncio.wait_for(
                    served.backend.generate(conversation, params),
                    timeout=self.settings.routing.timeout_s,
                )
            self.metrics.routed.labels(arm, served.version).inc()
            self.metrics.verdict("inference", "allow", time.perf_counter() - t0)
        except NoModelError as exc:
            ctx.error = f"no model: {exc}"
        except TimeoutError:
            ctx.error = f"model timed out after {self.settings.routing.timeout_s} s"
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a fallback
            logger.exception("model %s v%s failed", ctx.model_name, ctx.model_version)
            ctx.error = f"model error: {type(exc).__name__}: {exc}"
        if generation is None:
            self.metrics.verdict("inference", "block", time.perf_counter() - t0)
            text = self._fallback(ctx, "model_error")
            ctx.response, ctx.finish_reason = text, "stop"
            await self._escalate(ctx, "model_error", model_messages)
            return ChatOutcome(
                ctx.interaction_id, text, "stop", self.model_name, fingerprint, 0, 0, created
            )
        ctx.prompt_tokens = generation.prompt_tokens
        ctx.completion_tokens = generation.completion_tokens
        self.metrics.tokens.labels("prompt", ctx.route, ctx.model_version or "").inc(
            generation.prompt_tokens
        )
        self.metrics.tokens.labels("completion", ctx.route, ctx.model_version or "").inc(
            generation.completion_tokens
        )
        out_verdict, text = await self._output_rails(ctx, generation.text, facts, prompt_text)
        ctx.output_verdicts.append(out_verdict)
        finish = generation.finish_reason
        if out_verdict.action == "block":
            text = self._fallback(ctx, "output_blocked")
            finish = "content_filter"
        ctx.response, ctx.finish_reason = text, finish
        if out_verdict.action == "block":
            await self._escalate(ctx, "output_block", model_messages)
        elif out_verdict.action == "flag" or verdict.action == "flag":
            await self._escalate(ctx, "flag", model_messages)
        return ChatOutcome(
            ctx.interaction_id,
            text,
            finish,
            self.model_name,
            fingerprint,
            generation.prompt_tokens,
            generation.completion_tokens,
            created,
        )
