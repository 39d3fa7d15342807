"""The FastAPI app: OpenAI-compatible chat, feedback, review queue, admin, health, metrics.

Authentication, role checks, rate and size limits and the UTF-8 check run in a pure ASGI
middleware *before* the body is parsed, so an unauthenticated caller gets 401 (not a
schema error) and a flood never reaches JSON parsing. The same middleware writes the
interaction record of every ``/v1/chat/completions`` request — served, rejected or failed
— exactly once, before the last byte of the response goes out.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from loopwright.gateway.alerts import AlertForwarder, add_alert_routes
from loopwright.gateway.keys import KeyStoreError
from loopwright.gateway.review import ReviewError, ReviewItem
from loopwright.gateway.review_ui import add_review_ui
from loopwright.gateway.schemas import (
    ArmOut,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorResponse,
    FeedbackAccepted,
    FeedbackRequest,
    HealthOut,
    KeyCreated,
    KeyCreateRequest,
    KeyList,
    KeyOut,
    ModelCard,
    ModelList,
    ResolveRequest,
    ReviewItemOut,
    ReviewList,
    RoutingOut,
    Usage,
)
from loopwright.gateway.service import ApiError, ChatOutcome, Gateway, RequestContext, user_hash
from loopwright.records import FeedbackEvent, FeedbackKind

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INTERACTION_HEADER = "x-loopwright-interaction-id"
# Without auth and size limits a body is still capped, so nothing can exhaust memory.
_HARD_BODY_CAP = 8 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Body is not valid UTF-8 or not JSON.",
        401: "Missing, malformed, unknown or revoked API key.",
        403: "The key's role may not use this endpoint.",
        404: "Unknown model or item (other tenants' items look missing).",
        409: "Review item claimed by someone else or already resolved.",
        413: "Body larger than the size limit.",
        422: "Body does not match the schema or the limits; the message says what.",
        429: "Rate limit exceeded; see Retry-After.",
    }.items()
}


def endpoint_of(path: str) -> str:
    """Metric/log label of a ``/v1`` path."""
    if path == "/v1/chat/completions":
        return "chat"
    if path == "/v1/models":
        return "models"
    if path == "/v1/feedback":
        return "feedback"
    if path == "/v1/review" or path.startswith("/v1/review/"):
        return "review"
    if path == "/v1/admin" or path.startswith("/v1/admin/"):
        return "admin"
    return "other"


def error_body(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI-style error JSON."""
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode("utf-8")


def _ctx(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["lw"]
    return ctx


class ControlMiddleware:
    """Auth, roles, rate and size limits, UTF-8 check, and exactly-once logging."""

    def __init__(self, app: Callable[..., Awaitable[None]], gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def _read_body(self, receive: Receive, limit: int, declared: int | None) -> bytes:
        if declared is not None and declared > limit:
            raise ApiError(
                413,
                f"request body of {declared} bytes exceeds the limit of {limit}",
                reason="rate_limit:body_too_large",
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(
                    400,
                    "client disconnected before sending the body",
                    reason="validation:disconnected",
                )
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    f"request body exceeds the limit of {limit} bytes",
                    reason="rate_limit:body_too_large",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: control ``/v1`` requests, pass everything else through."""
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        gw = self.gateway
        ctx = gw.new_context(endpoint_of(scope["path"]))
        scope.setdefault("state", {})["lw"] = ctx
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status_code = message["status"]
                headers = list(message.get("headers", []))
                if ctx.endpoint == "chat":
                    headers.append((INTERACTION_HEADER.encode(), ctx.interaction_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await gw.finish(ctx)
            await send(message)

        async def answer(err: ApiError) -> None:
            headers = [(b"content-type", b"application/json")]
            headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await send_wrapper(
                {"type": "http.response.start", "status": err.status, "headers": headers}
            )
            await send_wrapper(
                {
                    "type": "http.response.body",
                    "body": error_body(err.status, err.message, err.kind, err.param, err.reason),
                }
            )

        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        try:
            try:
                gw.authenticate(ctx, headers.get("authorization"))
                if ctx.endpoint == "review":
                    gw.authorize(ctx, "reviewer")
                elif ctx.endpoint == "admin":
                    gw.authorize(ctx, "admin")
                gw.rate_limit(ctx)
                limit = (
                    gw.settings.rate_limit.max_body_bytes
                    if gw.settings.rate_limit.enabled
                    else _HARD_BODY_CAP
                )
                declared = headers.get("content-length")
                declared_n = int(declared) if declared and declared.isdigit() else None
                body = await self._read_body(receive, limit, declared_n)
                if gw.settings.validation.enabled:
                    try:
                        body.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        gw.reject(ctx, "validation", "validation:utf8", "body is not UTF-8")
                        raise ApiError(
                            400,
                            f"request body is not valid UTF-8: byte "
                            f"0x{body[exc.start]:02x} at position {exc.start}",
                            reason="validation:utf8",
                        ) from exc
            except ApiError as err:
                if ctx.error is None:  # not yet recorded by the layer that raised it
                    gw.reject(ctx, err.reason.split(":", 1)[0], err.reason, err.message)
                await answer(err)
                return

            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            try:
                await self.app(scope, replay, send_wrapper)
            except Exception as exc:  # noqa: BLE001 - never leak a traceback; log the request
                logger.exception("unhandled error on %s", scope["path"])
                ctx.error = f"internal error: {type(exc).__name__}: {exc}"
                if not started:
                    await answer(
                        ApiError(
                            500,
                            "internal error; the request was logged",
                            kind="server_error",
                            reason="internal",
                        )
                    )
        finally:
            if not ctx.finished:
                if not started:
                    ctx.status_code = 499  # the client went away before any answer
                await gw.finish(ctx)


def _item_out(item: ReviewItem) -> ReviewItemOut:
    return ReviewItemOut(
        item_id=item.item_id,
        interaction_id=item.interaction_id,
        created_at=item.created_at,
        reasons=item.reasons,
        payload=item.payload,
        status=item.status,
        claimed_by=item.claimed_by,
        resolved_by=item.resolved_by,
        label=item.label,
        correction=item.correction,
        gold=item.gold,
    )


_PIECES = re.compile(r"\S+\s*|\s+")


def _sse(outcome: ChatOutcome, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a finished answer, word by word.

    Buffered streaming: the output rails need the whole answer before any of it may leave.
    """

    async def events() -> AsyncIterator[str]:
        base: dict[str, Any] = {
            "id": outcome.interaction_id,
            "created": outcome.created,
            "model": outcome.model,
            "system_fingerprint": outcome.fingerprint,
        }

        def chunk(**kw: Any) -> str:
            return f"data: {ChatCompletionChunk(**base, **kw).model_dump_json()}\n\n"

        yield chunk(choices=[ChunkChoice(delta=Delta(role="assistant", content=""))])
        for piece in _PIECES.findall(outcome.text):
            yield chunk(choices=[ChunkChoice(delta=Delta(content=piece))])
        yield chunk(choices=[ChunkChoice(delta=Delta(), finish_reason=outcome.finish_reason)])  # type: ignore[arg-type]
        if include_usage:
            yield chunk(
                choices=[],
                usage=Usage(
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                    total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
                ),
            )
        yield "data: [DONE]\n\n"

    return events()


def _alert_forwarder(gateway: Gateway) -> AlertForwarder | None:
    alerts = gateway.settings.alerts
    if not alerts.prefect_api_url:
        return None
    return AlertForwarder(
        alerts.prefect_api_url,
        gateway.settings.routing.app,
        gateway.run_dir / alerts.state_file,
        review=(gateway.review, alerts.review_tenant) if alerts.review_tenant else None,
    )


def create_app(gateway: Gateway, *, manage_lifecycle: bool = True) -> FastAPI:
    """The FastAPI app around a :class:`Gateway`.

    Args:
        gateway: the runtime (models, stores, settings).
        manage_lifecycle: start the gateway on startup and stop it on shutdown.

    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle and not gateway.started:
            gateway.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                gateway.stop()

    app = FastAPI(
        title="loopwright gateway",
        version="1",
        description="OpenAI-compatible chat with layered controls, canary routing and an "
        "interaction log that feeds the improvement loop.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(ControlMiddleware, gateway=gateway)
    bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer lw_...`")
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], responses=_ERRORS)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        ctx = request.scope.get("state", {}).get("lw")
        if ctx is not None and exc.status < 500 and exc.reason.startswith("validation:"):
            gateway.reject(ctx, "validation", exc.reason, exc.message)
        return Response(
            error_body(exc.status, exc.message, exc.kind, exc.param, exc.reason),
            status_code=exc.status,
            headers=exc.headers,
            media_type="application/json",
        )

    @app.exception_handler(RequestValidationError)
    async def _schema_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(problems)
        ctx = request.scope.get("state", {}).get("lw")
        if ctx is not None:
            gateway.reject(ctx, "validation", "validation:schema", message)
        param = None
        if exc.errors():
            param = ".".join(str(p) for p in exc.errors()[0].get("loc", ()) if p != "body") or None
        return Response(
            error_body(422, message, "invalid_request_error", param, "validation:schema"),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        ctx = request.scope.get("state", {}).get("lw")
        if ctx is not None:
            ctx.error = f"http {exc.status_code}: {exc.detail}"
        return Response(
            error_body(exc.status_code, str(exc.detail), "invalid_request_error"),
            status_code=exc.status_code,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )

    # -- OpenAI-compatible -------------------------------------------------------------

    @v1.get("/models", response_model=ModelList, summary="List models")
    async def list_models() -> ModelList:
        now = int(time.time())
        return ModelList(data=[ModelCard(id=name, created=now) for name in gateway.model_names()])

    @v1.post(
        "/chat/completions",
        response_model=ChatCompletion,
        summary="Create a chat completion (plain or streamed as server-sent events)",
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "string",
                            "description": "`data: <ChatCompletionChunk JSON>` "
                            "events, ending with `data: [DONE]`",
                        }
                    }
                }
            }
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        ctx = _ctx(request)
        outcome = await gateway.chat(ctx, body)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(outcome, include),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        completion = ChatCompletion(
            id=outcome.interaction_id,
            created=outcome.created,
            model=outcome.model,
            system_fingerprint=outcome.fingerprint,
            choices=[
                Choice(
                    message=AssistantMessage(content=outcome.text),
                    finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
                )
            ],
            usage=Usage(
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
            ),
        )
        return Response(completion.model_dump_json(), media_type="application/json")

    # -- feedback ----------------------------------------------------------------------

    @v1.post(
        "/feedback",
        response_model=FeedbackAccepted,
        summary="Rate, correct or compare answers of one of your interactions",
    )
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackAccepted:
        ctx = _ctx(request)
        if not gateway.ids.belongs(body.interaction_id, ctx.tenant):
            raise ApiError(
                404,
                f"no interaction {body.interaction_id!r} in your tenant",
                kind="not_found_error",
                param="interaction_id",
                reason="feedback:unknown_interaction",
            )
        key_id = ctx.principal.key_id if ctx.principal else "anonymous"
        value: Any = body.value
        if isinstance(body.value, BaseModel):
            value = body.value.model_dump()
        event = FeedbackEvent(
            id=f"fb-{secrets.token_hex(12)}",
            interaction_id=body.interaction_id,
            kind=body.kind,
            value=value,
            source="user",
            author=user_hash(ctx.tenant, body.user or key_id),
        )
        await gateway.log_feedback(event)
        return FeedbackAccepted(id=event.id, interaction_id=event.interaction_id, kind=event.kind)

    # -- review queue (reviewer or admin) ----------------------------------------------

    def _review(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ReviewError as err:
            raise ApiError(
                err.status, str(err), kind="invalid_request_error", reason="review:refused"
            ) from err

    @v1.get("/review/items", response_model=ReviewList, summary="List review items")
    async def review_list(
        request: Request,
        status: str | None = Query("pending", pattern="^(pending|claimed|resolved|all)$"),
        limit: int = Query(50, ge=1, le=500),
        after: int = Query(0, ge=0),
        reason: str | None = Query(
            None, max_length=200, description="flag reason, or its prefix before a ':'"
        ),
    ) -> ReviewList:
        ctx = _ctx(request)
        wanted: Any = None if status == "all" else status  # validated by the pattern above
        items = gateway.review.list(ctx.tenant, wanted, limit, after, reason)
        return ReviewList(items=[_item_out(i) for i in items])

    @v1.get("/review/items/{item_id}", response_model=ReviewItemOut, summary="One review item")
    async def review_get(item_id: int, request: Request) -> ReviewItemOut:
        ctx = _ctx(request)
        return _item_out(_review(lambda: gateway.review.get(ctx.tenant, item_id)))

    @v1.post(
        "/review/items/{item_id}/claim",
        response_model=ReviewItemOut,
        summary="Claim a pending item",
    )
    async def review_claim(item_id: int, request: Request) -> ReviewItemOut:
        ctx = _ctx(request)
        assert ctx.principal is not None
        who = ctx.principal.key_id
        return _item_out(_review(lambda: gateway.review.claim(ctx.tenant, item_id, who)))

    @v1.post(
        "/review/items/{item_id}/resolve",
        response_model=ReviewItemOut,
        summary="Label an item (writes reviewer feedback events)",
    )
    async def review_resolve(item_id: int, body: ResolveRequest, request: Request) -> ReviewItemOut:
        ctx = _ctx(request)
        assert ctx.principal is not None
        who = ctx.principal.key_id
        item = _review(
            lambda: gateway.review.resolve(
                ctx.tenant, item_id, who, body.label, body.correction, body.note, body.gold
            )
        )
        # The label, then the correction, then the gold mark: curation reads the gold
        # mark together with the label and correction logged before it.
        events: list[tuple[FeedbackKind, Any]] = [("reviewer_label", body.label)]
        if body.correction:
            events.append(("correction", body.correction))
        if body.gold:
            events.append(("gold", True))
        for kind, value in events:
            await gateway.log_feedback(
                FeedbackEvent(
                    id=f"fb-{secrets.token_hex(12)}",
                    interaction_id=item.interaction_id,
                    kind=kind,
                    value=value,
                    source="reviewer",
                    author=who,
                )
            )
        return _item_out(item)

    # -- admin -------------------------------------------------------------------------

    def _key_out(info: Any) -> KeyOut:
        return KeyOut(**info.__dict__)

    @v1.get("/admin/keys", response_model=KeyList, summary="Keys of your tenant")
    async def admin_keys(request: Request) -> KeyList:
        ctx = _ctx(request)
        return KeyList(keys=[_key_out(k) for k in gateway.keys.list(tenant=ctx.tenant)])

    @v1.post("/admin/keys", response_model=KeyCreated, summary="Create a key in your tenant")
    async def admin_create_key(body: KeyCreateRequest, request: Request) -> KeyCreated:
        ctx = _ctx(request)
        try:
            info, key = gateway.keys.create(ctx.tenant, body.role, body.name, body.requests_per_s)
        except KeyStoreError as err:
            raise ApiError(422, str(err), reason="validation:key") from err
        return KeyCreated(key=key, info=_key_out(info))

    @v1.delete("/admin/keys/{key_id}", response_model=KeyOut, summary="Revoke a key")
    async def admin_revoke_key(key_id: str, request: Request) -> KeyOut:
        ctx = _ctx(request)
        try:
            return _key_out(gateway.keys.revoke(key_id, tenant=ctx.tenant))
        except KeyStoreError as err:
            raise ApiError(
                404, str(err), kind="not_found_error", reason="admin:unknown_key"
            ) from err

    def _routing() -> RoutingOut:
        table = gateway.router.table

        def arm(served: Any) -> ArmOut | None:
            if served is None:
                return None
            return ArmOut(name=served.name, version=served.version, inflight=served.inflight)

        poller = gateway.poller
        return RoutingOut(
            source=gateway.settings.routing.source,
            champion=arm(table.champion),
            canary=arm(table.canary),
            canary_fraction=table.canary_fraction,
            last_error=poller.last_error if poller else None,
            swaps=gateway.router.swaps,
        )

    @v1.get("/admin/routing", response_model=RoutingOut, summary="What serves now")
    async def admin_routing() -> RoutingOut:
        return _routing()

    @v1.post("/admin/routing/refresh", response_model=RoutingOut, summary="Poll the registry now")
    async def admin_refresh() -> RoutingOut:
        if gateway.poller is not None:
            import anyio

            await anyio.to_thread.run_sync(gateway.poller.poll_once)
        return _routing()

    add_alert_routes(v1, _alert_forwarder(gateway))
    app.include_router(v1)
    add_review_ui(app)  # the reviewers' page: it calls the /v1/review API above

    # -- health and metrics (no auth: probes and scrapers) -----------------------------

    @app.get("/healthz", response_model=HealthOut, summary="Liveness")
    async def healthz() -> HealthOut:
        return HealthOut(status="ok")

    @app.get(
        "/readyz",
        response_model=HealthOut,
        summary="Readiness",
        responses={503: {"model": HealthOut}},
    )
    async def readyz() -> Response:
        problems = gateway.problems()
        out = HealthOut(status="unavailable" if problems else "ok", problems=problems)
        return JSONResponse(out.model_dump(), status_code=503 if problems else 200)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        m = gateway.metrics
        for spool in (gateway.interaction_log, gateway.feedback_log):
            m.log_pending_segments.labels(spool.kind).set(len(spool.pending()))
            m.log_ship_failures.labels(spool.kind).set(spool.ship_failures)
        m.model_swaps.set(gateway.router.swaps)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def build_app(settings: Any, run_dir: str | Path, **components: Any) -> FastAPI:
    """Settings + run directory -> app (the gateway is started by the app's lifespan).

    ``components`` are passed to :class:`Gateway` (guard, embedder, facts, store, ...).
    """
    return create_app(Gateway(settings, run_dir, **components))
