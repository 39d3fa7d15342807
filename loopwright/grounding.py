"""How retrieved facts reach the model: one format for serving and for training.

The gateway appends the facts it retrieved to its system prompt; a policy trained to read
them must see exactly the same text during training, or it learns a format it never gets.
Both sides call :func:`system_with_facts`, so the format lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

FACTS_HEADER = "\nFacts:\n"
"""What separates the system prompt from the facts (one ``- fact`` line each follows)."""


def system_with_facts(system_prompt: str, fact_texts: Sequence[str]) -> str:
    """The system prompt with the retrieved facts appended, best first (none: unchanged)."""
    if not fact_texts:
        return system_prompt
    return system_prompt + FACTS_HEADER + "\n".join(f"- {text}" for text in fact_texts)


def with_facts(
    messages: Sequence[dict[str, str]], fact_texts: Sequence[str], system_prompt: str
) -> list[dict[str, str]]:
    """``messages`` as the gateway sends them to the model with ``fact_texts`` retrieved.

    A conversation that already starts with a system message (the gateway's prompt, in
    training data written as served) gets the facts appended to it; otherwise
    ``system_prompt`` with the facts goes first, as the gateway puts it.
    """
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = system_with_facts(out[0]["content"], fact_texts)
        return out
    return [{"role": "system", "content": system_with_facts(system_prompt, fact_texts)}, *out]
