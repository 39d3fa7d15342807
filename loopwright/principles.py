"""Feedback from written principles: a judge critiques and revises answers against them.

A domain writes what its answers must respect in a versioned principles file::

    # recipes/principles.yaml
    version: 2
    principles:
      - Answer only from the facts you were given; say so when you do not know.
      - Never ask for a password or a card number.

The preference step (:func:`loopwright.preference.preference_step`) asks a configured
OpenAI-compatible judge to revise the policy's answers so that they follow every principle;
where the revision differs, it is chosen over the original with source ``principles`` and
the file's version recorded. Without a judge the principles cannot be read by any model
here; the reward model then ranks sampled answers alone (``reward_ranked``), logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field

from loopwright.release.strict import StrictModel, VersionStr, load_yaml, parse_model

logger = logging.getLogger(__name__)

REVISE_PROMPT = (
    "Principles the answer must follow:\n{principles}\n\nQuestion:\n{question}\n\n"
    "Answer:\n{answer}\n\nFirst find where the answer breaks a principle; then write the "
    "answer again so that it follows every principle. Reply with the revised answer only."
)

# (questions, answers, principles text) -> revised answers (None: the judge gave none).
Reviser = Callable[[Sequence[str], Sequence[str], str], list[str | None]]


class Principles(StrictModel):
    """A domain's principles file (validated; unknown keys fail naming the valid ones)."""

    version: VersionStr
    principles: list[str] = Field(min_length=1)
    revise_prompt: str = REVISE_PROMPT

    def text(self) -> str:
        """The principles as a numbered list."""
        return "\n".join(f"{i}. {p}" for i, p in enumerate(self.principles, 1))


def load_principles(path: str | Path) -> Principles:
    """Read a principles file.

    Raises:
        loopwright.release.strict.ConfigError: missing, not YAML, or not a valid file.
    """
    from loopwright.release.strict import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"principles file {path} does not exist")
    data, _ = load_yaml(path)
    return parse_model(Principles, data, str(path))


def revision_pairs(
    answers: Sequence[str], revisions: Sequence[str | None]
) -> list[tuple[int, str, str]]:
    """``(index, revision, original)`` where the judge's revision differs from the answer.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(answers) != len(revisions):
        raise ValueError(f"{len(answers)} answers but {len(revisions)} revisions")
    return [
        (i, revised.strip(), answer)
        for i, (answer, revised) in enumerate(zip(answers, revisions, strict=True))
        if revised and revised.strip() and revised.strip() != answer.strip()
    ]


def endpoint_reviser(
    base_url: str, model: str, api_key_env: str | None, prompt: str = REVISE_PROMPT
) -> Reviser:
    """A :data:`Reviser` that asks an OpenAI-compatible chat endpoint, one request per answer.

    A failed request or an empty reply gives None for that answer (logged), never an error:
    a judge outage costs the night its principle pairs, not its candidate.
    """
    import httpx

    headers = {"Authorization": f"Bearer {os.environ.get(api_key_env, '')}"} if api_key_env else {}

    def revise(
        questions: Sequence[str], answers: Sequence[str], principles: str
    ) -> list[str | None]:
        out: list[str | None] = []
        with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=60) as client:
            for question, answer in zip(questions, answers, strict=True):
                content = prompt.format(principles=principles, question=question, answer=answer)
                try:
                    response = client.post(
                        "/chat/completions",
                        json={
                            "model": model,
                            "messages": [{"role": "user", "content": content}],
                            "temperature": 0,
                        },
                    )
                    response.raise_for_status()
                    out.append(response.json()["choices"][0]["message"]["content"])
                except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                    logger.warning("principles judge failed on one answer: %s", exc)
                    out.append(None)
        return out

    return revise
