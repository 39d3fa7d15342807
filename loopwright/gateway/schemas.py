"""Wire schemas of the gateway API (OpenAI chat completions plus loopwright endpoints).

These models are what FastAPI validates and documents, so the OpenAPI schema is exactly
what the server accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loopwright.gateway.review import ReviewLabel


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_In):
    """A text content part (the only kind this gateway accepts)."""

    type: Literal["text"]
    text: str


class ChatMessageIn(_In):
    """One message of a chat request.

    ``developer`` is treated as ``system``. Content is a string or a list of text parts.
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """The content as one string (text parts joined with newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def plain_role(self) -> Literal["system", "user", "assistant"]:
        """The role in the record vocabulary (developer -> system)."""
        return "system" if self.role == "developer" else self.role


class StreamOptions(_In):
    """``stream_options``: ask for a final usage chunk."""

    include_usage: bool = False


class ChatCompletionRequest(_In):
    """``POST /v1/chat/completions`` body (the subset of OpenAI's that applies here).

    Sampling: ``temperature`` 0 (the default) is greedy. ``max_tokens`` and
    ``max_completion_tokens`` are synonyms; the gateway caps them.
    """

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: Literal[1] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    metadata: dict[str, str] | None = None


class AssistantMessage(BaseModel):
    """The reply message."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    """One completion choice (the gateway always returns exactly one)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class Usage(BaseModel):
    """Token counts of one request (prompt as rendered for the model)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """``chat.completion`` object.

    ``id`` is the interaction id to use for feedback; ``system_fingerprint`` is
    ``<model>@<version>/<arm>``.
    """

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """Streamed increment of the reply."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One streamed choice."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """``chat.completion.chunk`` object sent as server-sent events."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loopwright"


class ModelList(BaseModel):
    """``GET /v1/models`` response."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """OpenAI-style error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorBody


# -- feedback -------------------------------------------------------------------------


class _FeedbackBase(_In):
    interaction_id: str = Field(min_length=1, max_length=128)
    user: str | None = Field(
        default=None, max_length=256, description="End user giving the feedback."
    )


class RatingFeedback(_FeedbackBase):
    """Thumbs up (1) or down (-1)."""

    kind: Literal["rating"]
    value: Literal[1, -1]


class CorrectionFeedback(_FeedbackBase):
    """The answer the user says would have been right."""

    kind: Literal["correction"]
    value: str = Field(min_length=1, max_length=8_000)


class PreferenceValue(_In):
    """Two answers and which one is better."""

    chosen: str = Field(min_length=1, max_length=8_000)
    rejected: str = Field(min_length=1, max_length=8_000)


class PreferenceFeedback(_FeedbackBase):
    """A preference between two answers to the interaction's prompt."""

    kind: Literal["preference"]
    value: PreferenceValue


FeedbackRequest = Annotated[
    RatingFeedback | CorrectionFeedback | PreferenceFeedback, Field(discriminator="kind")
]


class FeedbackAccepted(BaseModel):
    """Feedback was written to the log."""

    id: str
    interaction_id: str
    kind: str


# -- review queue ---------------------------------------------------------------------


class ReviewItemOut(BaseModel):
    """A review-queue item as reviewers see it."""

    item_id: int
    interaction_id: str
    created_at: str
    reasons: list[str]
    payload: dict[str, Any]
    status: Literal["pending", "claimed", "resolved"]
    claimed_by: str | None
    resolved_by: str | None
    label: str | None
    correction: str | None
    gold: bool = False


class ReviewList(BaseModel):
    """A page of review items."""

    items: list[ReviewItemOut]


class ResolveRequest(_In):
    """A reviewer's verdict on an item; a correction becomes a correction event.

    ``gold`` marks the reviewed answer (the correction, else the served answer labelled
    good) as a reference: a ``gold`` event that the nightly curation turns into a case of
    the gold evaluation suite and a held-out pair of the reward model.
    """

    label: ReviewLabel
    correction: str | None = Field(default=None, min_length=1, max_length=8_000)
    note: str | None = Field(default=None, max_length=2_000)
    gold: bool = False


# -- admin ----------------------------------------------------------------------------


class KeyCreateRequest(_In):
    """Create a key in the caller's tenant."""

    role: Literal["user", "reviewer", "admin"] = "user"
    name: str = Field(default="", max_length=64)
    requests_per_s: float | None = Field(default=None, gt=0)


class KeyOut(BaseModel):
    """A key without its secret."""

    key_id: str
    name: str
    tenant: str
    role: str
    created_at: str
    revoked_at: str | None
    requests_per_s: float | None


class KeyCreated(BaseModel):
    """A new key; ``key`` is shown only here."""

    key: str
    info: KeyOut


class KeyList(BaseModel):
    """Keys of the caller's tenant."""

    keys: list[KeyOut]


class ArmOut(BaseModel):
    """One serving arm."""

    name: str
    version: str
    inflight: int


class RoutingOut(BaseModel):
    """What serves now and where it came from."""

    source: str
    champion: ArmOut | None
    canary: ArmOut | None
    canary_fraction: float
    last_error: str | None
    swaps: int


class HealthOut(BaseModel):
    """Liveness/readiness answer; ``problems`` says what is not ready."""

    status: Literal["ok", "unavailable"]
    problems: list[str] = Field(default_factory=list)
