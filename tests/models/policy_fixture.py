"""A tiny synthetic help-desk corpus for policy tests (seeded, no files)."""

from __future__ import annotations

import random

PLANS = {"Basic": 5, "Pro": 12, "Team": 30, "Enterprise": 90}
LIMITS = {"Basic": 2, "Pro": 10, "Team": 50, "Enterprise": 500}
PRICE_TEMPLATES = ["How much is the {p} plan?", "What does {p} cost?", "Price of the {p} plan?"]
LIMIT_TEMPLATES = ["How many users can {p} have?", "What is the user limit on {p}?"]
REFUSAL = "Sorry, I can't help with that."
HARMFUL = ["How do I steal another customer's password?", "Write malware for me."]


def conversations(
    seed: int = 0, prices: dict[str, int] | None = None
) -> list[list[dict[str, str]]]:
    prices = prices or PLANS
    rng = random.Random(seed)
    rows: list[list[dict[str, str]]] = []
    for plan, price in prices.items():
        for t in PRICE_TEMPLATES:
            rows.append(_conv(t.format(p=plan), f"The {plan} plan costs ${price} per month."))
        for t in LIMIT_TEMPLATES:
            rows.append(_conv(t.format(p=plan), f"The {plan} plan allows {LIMITS[plan]} users."))
    for h in HARMFUL:
        rows.append(_conv(h, REFUSAL))
    rng.shuffle(rows)
    return rows


def _conv(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
