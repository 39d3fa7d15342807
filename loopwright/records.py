"""The record contracts every stage reads and writes (DESIGN.md, "Records").

Every record carries ``schema_version``. Readers reject unknown versions loudly: a record
written by a newer loopwright must never be half-understood by an older one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

Role = Literal["system", "user", "assistant"]
Route = Literal["champion", "canary", "none"]
RailAction = Literal["allow", "block", "redact", "flag"]
ExpectedBehaviour = Literal["answer", "refuse", "safe_complete"]
Dimension = Literal[
    "correctness",
    "hallucination",
    "harmlessness",
    "over_refusal",
    "consistency",
    "robustness",
    "helpfulness",
    "regression",
    "gold",
    "fairness",
]
DIMENSIONS: tuple[str, ...] = Dimension.__args__  # type: ignore[attr-defined]
FeedbackKind = Literal["rating", "correction", "preference", "reviewer_label", "gold"]
FeedbackSource = Literal["user", "reviewer"]


class RecordError(ValueError):
    """A record failed its contract; the message names the source and what is wrong."""


class Record(BaseModel):
    """Base of every record: strict keys, a schema version that readers check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(
                f"unknown schema_version {value}; this loopwright reads "
                f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        return value


class Message(BaseModel):
    """One chat message, as in the OpenAI chat API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class RailVerdict(BaseModel):
    """What one control layer decided about a request or a response.

    Attributes:
        action: allow, block, redact (content changed) or flag (allowed, marked for review).
        scores: named classifier scores in [0, 1].
        reasons: short machine-readable reasons, e.g. ``"guard:injection"``.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: RailAction = "allow"
    scores: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


def utcnow() -> datetime:
    """Timezone-aware UTC now; every timestamp in a record is UTC."""
    return datetime.now(UTC)


class Interaction(Record):
    """One gateway request, written exactly once whether it was served or rejected.

    Attributes:
        latency_ms: wall time from request received to response sent, milliseconds.
        status_code: the HTTP status the gateway answered with.

    """

    id: str
    timestamp: datetime = Field(default_factory=utcnow)
    tenant: str
    user_hash: str
    session_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    route: Route = "none"
    system_prompt_version: str | None = None
    messages: list[Message] = Field(default_factory=list)
    retrieved_context_ids: list[str] = Field(default_factory=list)
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    status_code: int = 200
    input_verdict: RailVerdict = Field(default_factory=RailVerdict)
    output_verdict: RailVerdict = Field(default_factory=RailVerdict)
    fallback_used: bool = False
    escalated: bool = False
    error: str | None = None


class FeedbackEvent(Record):
    """Feedback on one interaction.

    ``value`` depends on ``kind``: rating -> +1 / -1 (thumbs); correction -> the corrected
    answer text; preference -> ``{"chosen": str, "rejected": str}``; reviewer_label ->
    a label such as ``"unsafe"``, ``"wrong_fact"``, ``"good"``; gold -> ``true`` (a
    reviewer marked the interaction gold: its reviewed answer becomes an evaluation
    reference and a held-out reward pair, see :mod:`loopwright.data.curate`).
    """

    id: str
    interaction_id: str
    kind: FeedbackKind
    value: Any
    source: FeedbackSource
    author: str
    timestamp: datetime = Field(default_factory=utcnow)


class PreferencePair(Record):
    """A preference between two responses to the same prompt; ``weight`` >= 0 scales the loss."""

    prompt: str
    chosen: str
    rejected: str
    source: str
    weight: float = Field(default=1.0, ge=0)


class EvalSample(Record):
    """One evaluation case.

    Attributes:
        group: paraphrase / perturbation family; samples sharing it should agree.
        references: acceptable answers (reference-based scorers need at least one).
        expected_behaviour: answer, refuse, or safe_complete.
        tags: free-form slice keys, e.g. ``{"split": "heldout", "transform": "leet"}``.

    """

    id: str
    suite: str
    dimension: Dimension
    messages: list[Message]
    references: list[str] = Field(default_factory=list)
    group: str | None = None
    expected_behaviour: ExpectedBehaviour = "answer"
    tags: dict[str, str] = Field(default_factory=dict)


class MetricValue(BaseModel):
    """A metric with its 95% CI and sample count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=0)


class EvalReport(Record):
    """An evaluation summary: per dimension and slice, metric values with CIs.

    ``slices`` maps ``"<dimension>/<slice>"`` (``"<dimension>/all"`` for the whole
    dimension) to the metrics measured there. Per-sample results live in an artifact.
    """

    model_uri: str
    suites: list[str]
    slices: dict[str, list[MetricValue]]
    errors: int = 0
    created_at: datetime = Field(default_factory=utcnow)


R = TypeVar("R", bound=BaseModel)


def parse_record(cls: type[R], data: dict[str, Any], source: str = "<record>") -> R:
    """Validate one record dict, raising :class:`RecordError` that names ``source``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise RecordError(f"{source}: invalid {cls.__name__}: {problems}") from exc


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(line number, "path:line", object)`` for each non-blank line of a JSONL file.

    Raises:
        RecordError: a line is not JSON or not a JSON object (names the file and line).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(data, dict):
                raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
            yield lineno, where, data


def read_jsonl(path: str | Path, cls: type[R]) -> Iterator[R]:
    """Yield records from a JSONL file; a bad line raises naming the file and line number."""
    for _, where, data in jsonl_objects(path):
        yield parse_record(cls, data, where)


def to_json_line(record: BaseModel) -> str:
    """One record as a compact JSON line (no trailing newline)."""
    return record.model_dump_json()


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    """Write records as JSONL; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(to_json_line(record) + "\n")
            count += 1
    return count


Conversation = list[dict[str, str]]
"""A chat as role/content dicts: SFT rows and the conversations the trainers read."""


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> int:
    """Write SFT conversations as ``{"messages": [...]}`` lines; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for conv in conversations:
            handle.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_conversations(path: str | Path) -> list[Conversation]:
    """Read SFT conversations written by :func:`write_conversations`.

    Raises:
        RecordError: a line is not JSON, lacks ``messages``, or holds an invalid message;
            the message names the file and line.

    """
    out: list[Conversation] = []
    for _, where, data in jsonl_objects(path):
        if not isinstance(data.get("messages"), list):
            raise RecordError(f"{where}: expected an object with a 'messages' list")
        conv: Conversation = []
        for i, raw in enumerate(data["messages"]):
            try:
                msg = Message.model_validate(raw)
            except Exception as exc:
                raise RecordError(f"{where}: message {i} invalid: {exc}") from exc
            conv.append({"role": msg.role, "content": msg.content})
        out.append(conv)
    return out
