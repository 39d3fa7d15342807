"""Rule-based detectors: PII, known jailbreak patterns, unsupported numbers (grounding).

All functions are pure. They read the normalised views from :mod:`normalize`; the regexes
are hand-written because the PII and prompt-injection libraries that ship such patterns
pull in large models or spaCy, which this stack does not carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PII_KINDS = ("email", "phone", "card")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# Phone candidates: an optional +, then digit groups joined by space, dot, dash or
# parentheses. Accepted when they hold 9-15 digits and either start with + or use a
# separator (a bare 9-digit run is more often an order number than a phone).
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d \t().-]{6,20}\d(?![\w])")
# Card candidates: 13-19 digits, optionally grouped by spaces or dashes; Luhn decides.
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


@dataclass(frozen=True)
class PiiHit:
    """One PII match: kind, the matched text and its span in the scanned text."""

    kind: str
    text: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a digit string (13-19 digits for payment cards)."""
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char)
        if i % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def find_pii(text: str) -> list[PiiHit]:
    """Emails, phone numbers and Luhn-valid card numbers in ``text``, by position.

    Overlaps resolve in favour of the earlier kind in ``email, card, phone``.
    """
    hits: list[PiiHit] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for match in _EMAIL.finditer(text):
        hits.append(PiiHit("email", match.group(0), match.start(), match.end()))
        taken.append(match.span())
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if luhn_valid(digits) and free(*match.span()):
            hits.append(PiiHit("card", match.group(0), match.start(), match.end()))
            taken.append(match.span())
    for match in _PHONE.finditer(text):
        raw = match.group(0).strip()
        digits = re.sub(r"\D", "", raw)
        has_sep = bool(re.search(r"\d[ .()-]+\d", raw)) or raw.startswith("(")
        if 9 <= len(digits) <= 15 and (raw.startswith("+") or has_sep) and free(*match.span()):
            hits.append(PiiHit("phone", match.group(0), match.start(), match.end()))
            taken.append(match.span())
    return sorted(hits, key=lambda h: h.start)


def redact(text: str, hits: Iterable[PiiHit]) -> str:
    """Replace each hit with ``[EMAIL]``, ``[PHONE]`` or ``[CARD]``."""
    out = []
    pos = 0
    for hit in sorted(hits, key=lambda h: h.start):
        if hit.start < pos:
            continue
        out.append(text[pos : hit.start])
        out.append(f"[{hit.kind.upper()}]")
        pos = hit.end
    out.append(text[pos:])
    return "".join(out)


# Known jailbreak / prompt-injection phrasings, matched on the lower-cased, leet-folded,
# space-collapsed view. Each has a name that appears in the verdict's reasons.
JAILBREAK_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern)
    for name, pattern in {
        "ignore_instructions": r"\b(ignore|disregard|forget|skip|drop)\b.{0,30}\b(previous|prior|"
        r"above|earlier|preceding|all|any|your|the|system|original)\b.{0,20}\b(instructions?|"
        r"rules|prompts?|directions|guidelines|guardrails|constraints|polic(y|ies))\b",
        "override": r"\b(override|bypass|disable|turn off|circumvent)\b.{0,25}\b(safety|"
        r"filters?|restrictions?|rules|guardrails|content polic(y|ies)|moderation)\b",
        "persona_dan": r"\b(you are|you're|act as|become|now)\s+(now\s+)?dan\b|\bdan mode\b|"
        r"\bdo anything now\b|\b(you are|you're|now) (in )?developer mode\b|"
        r"\bdeveloper mode (is )?(enabled|activated|on)\b|\bjailbr(o|e)ken\b|"
        r"\bjailbreak mode\b|\bgod mode\b|\bunfiltered mode\b|\bevil (mode|assistant|twin)\b",
        "no_limits_roleplay": r"\b(pretend|act|behave|roleplay|role-play|imagine)\b.{0,40}\b(no|"
        r"without|free of|free from)\b.{0,15}\b(rules|restrictions|limits|filters|ethics|"
        r"guidelines|censorship)\b",
        "reveal_prompt": r"\b(reveal|print|show|repeat|output|leak|dump|tell me)\b.{0,25}\b("
        r"system prompt|hidden (instructions|prompt)|initial (instructions|prompt)|"
        r"instructions above|your instructions|developer (message|instructions))\b",
        "fake_system": r"(^|\s)(#{2,}\s*system|\[system\]|<\|?(im_start|system)\|?>|"
        r"new instructions:|system override|admin override)",
    }.items()
}


def find_jailbreaks(pattern_text: str) -> list[str]:
    """Names of the jailbreak patterns that match the pattern view of a text."""
    return [name for name, pattern in JAILBREAK_PATTERNS.items() if pattern.search(pattern_text)]


# First-person talk of suicide or self-harm, matched on the same pattern view. It decides no
# block: the guard and the rules do. It chooses the reply to a request they blocked, so a
# person in crisis is pointed to help instead of told "can't help" (safe-messaging practice).
# Hand-written because no installed library detects it; a miss leaves the generic block
# reply, a false match gives a blocked request the supportive one.
SELF_HARM_PATTERN = re.compile(
    r"\bsuicid(e|al)\b|\bkill(ing)? my ?self\b|\b(end|ending|take|taking) (my|my own) life\b|"
    r"\bend it all\b|"
    r"\b(hurt|hurting|harm|harming|cut|cutting|injure|injuring) my ?self\b|\bself[- ]?harm|"
    r"\boverdos(e|ing)\b|\b(want|wanna|wish|going|deserve) to die\b|\bbetter off dead\b|"
    r"\b(do not|don't|dont) want to (live|be alive|exist|wake up)\b|"
    r"\bno (reason|point) (to|in) (live|living|going on|go on)\b|"
    r"\b(reason|point) to keep living\b|\bnot worth living\b|\b(can't|cannot|cant) go on\b|"
    r"\b(nobody|no one|no-one) would (care|notice|miss me)\b.{0,30}\b(gone|dead|died)\b"
)


def mentions_self_harm(pattern_text: str) -> bool:
    """Whether the pattern view of a text speaks of suicide or harming oneself."""
    return SELF_HARM_PATTERN.search(pattern_text) is not None


_NUMBER = re.compile(r"(?P<cur>[$€£])?\s?(?P<num>\d+(?:[.,]\d+)*)\s?(?P<pct>%)?")


def _canonical_number(raw: str) -> str:
    # "1,000" and "1000" are the same figure; "12.50" and "12.5" too.
    value = raw.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def numbers_in(text: str, *, ignore_small: bool = True) -> set[str]:
    """Canonical figures in ``text``.

    Single digits without a unit are ignored by default: they are usually step numbers or
    counts, not facts.
    """
    found: set[str] = set()
    for match in _NUMBER.finditer(text):
        num = _canonical_number(match.group("num"))
        if ignore_small and len(num) == 1 and not match.group("cur") and not match.group("pct"):
            continue
        found.add(num)
    return found


def unsupported_numbers(answer: str, context_texts: Iterable[str], prompt: str = "") -> list[str]:
    """Figures in ``answer`` that appear neither in the retrieved facts nor in the prompt.

    A likely hallucination signal: a price or limit the model produced that the knowledge
    base did not supply. Returns them sorted.
    """
    known: set[str] = set()
    for text in context_texts:
        known |= numbers_in(text, ignore_small=False)
    known |= numbers_in(prompt, ignore_small=False)
    return sorted(numbers_in(answer) - known)
