"""Record types the help-desk domain adds on top of ``loopwright.records``.

* :class:`LabelledPrompt` - a guard training/evaluation example (prompt or response text
  with a benign / harmful / injection label).
* Conversations - SFT rows, ``list[{"role", "content"}]``, stored one per JSONL line as
  ``{"messages": [...]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from loopwright.records import (  # noqa: F401 - conversations are re-exported for the example
    Conversation,
    Record,
    read_conversations,
    read_jsonl,
    write_conversations,
)


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
