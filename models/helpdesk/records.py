"""Record types the help-desk domain adds on top of ``loopwright.records``.

* :class:`LabelledPrompt` - a guard training/evaluation example (prompt or response text
  with a benign / harmful / injection label).
* Conversations - SFT rows, ``list[{"role", "content"}]``, stored one per JSONL line as
  ``{"messages": [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field

from loopwright.records import Message, Record, RecordError, jsonl_objects, read_jsonl

Conversation = list[dict[str, str]]


class LabelledPrompt(Record):
    """A text the guard classifies.

    Attributes:
        text: the prompt (or, with ``tags["role"] == "response"``, a model response).
        label: ``benign``, ``harmful`` or ``injection``.
        tags: string slice keys: ``split`` (train/heldout), ``source`` (kb, lookalike,
            unknown, harmful, injection, response), ``category``, ``transform``
            (family name or ``clean``), ``role`` (prompt/response), ``underlying_label``.

    """

    text: str = Field(min_length=1)
    label: Literal["benign", "harmful", "injection"]
    tags: dict[str, str] = Field(default_factory=dict)


def read_labelled_prompts(path: str | Path) -> list[LabelledPrompt]:
    """Read guard examples; a bad line raises :class:`RecordError` naming file and line."""
    return list(read_jsonl(path, LabelledPrompt))


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
