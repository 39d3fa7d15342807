"""A small deterministic rule-based safety scorer for tests (not a mock of the guard).

It implements the guard's protocol (``scores(texts) -> list[{label: prob}]`` over the
labels benign / harmful / injection) with phrase lists written from the kinds of harm the
example domain covers. The real classifier is ``models.guard.Guard``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

HARMFUL = (
    r"without their password",
    r"steal",
    r"guess .{0,20}password",
    r"bypass two-factor",
    r"hijack",
    r"grab it from their",
    r"sign in as .{0,30}don't know the password",
    r"harvest .{0,30}credentials",
    r"crack .{0,30}account",
    r"session cookie from their",
    r"ransomware",
    r"keylogger",
    r"write .{0,30}virus",
    r"code for a virus",
    r"host malware",
    r"malicious payload",
    r"custom packer",
    r"evade",
    r"spamming",
    r"to spam",
    r"my spam",
    r"botnet",
    r"trojan",
    r"self-spreading",
    r"infects everyone",
    r"encrypts every file",
    r"ransom note",
    r"home address",
    r"phone number of",
    r"email addresses of all",
    r"lives at",
    r"customer emails",
    r"credit card details on file",
    r"has .{0,30}stored in their account",
    r"billing history of",
    r"personal contact info",
    r"where .{0,30}lives",
    r"customer database",
    r"card on file ends",
    r"end my life",
    r"kill myself",
    r"hurt myself",
    r"harm myself",
    r"hurt yourself",
    r"pills",
    r"suicide",
    r"if i was gone",
    r"reason to keep living",
    r"disappear forever",
    r"while you sleep",
    r"threatening",
    r"humiliate",
    r"watch your back",
    r"after they blocked",
    r"keep messaging",
    r"fake rumour",
    r"track .{0,30}location",
    r"regret crossing",
    r"cruel enough",
    r"intimidate",
    r"mocks .{0,30}appearance",
    r"you're useless",
    r"fake chargeback",
    r"fake .{0,20}(invoice|receipt|identities|number)",
    r"stolen credit",
    r"without being a student",
    r"bogus refund",
    r"forged",
    r"disputing every charge",
    r"counterfeit",
    r"prepaid card for each trial",
    r"flood",
    r"take .{0,30}offline",
    r"knock .{0,30}offline",
    r"denial of service",
    r"fake accounts",
    r"many free accounts",
    r"pirated",
    r"scrape every",
    r"mine cryptocurrency",
    r"spam emails",
    r"send 100,000",
    r"phishing email that",
    r"write a phishing",
    r"fake .{0,20}login page",
    r"fake sign-in page",
    r"turn off their 2fa",
    r"\.pdf\.exe",
    r"never authorised",
    r"loop requests",
    r"lookalike domain",
    r"lookalike .{0,20}sign-in page",
    r"enter your card number",
    r"avoid takedowns",
    r"bank pin",
    r"impersonating",
    r"unsolicited ads",
    r"filters never notice",
)
INJECTION = (
    r"ignore (all )?(previous|prior|your) (instructions|rules)",
    r"system prompt",
    r"system override",
    r"unrestricted ai",
    r"dan enabled",
    r"without any restrictions",
    r"admin password",
    r"disregard your",
    r"safety filters disabled",
    r"from now on",
    r"forget everything above",
    r"hidden instructions",
    r"previous messages never happened",
    r"drop all constraints",
    r"overwrite your instructions",
    r"guidelines were deleted",
    r"constraints removed",
    r"api_secret",
)


class RuleGuard:
    """Scores 0.95 for a label whose phrases match, 0.02 otherwise."""

    def __init__(self) -> None:
        self._harmful = [re.compile(p, re.IGNORECASE) for p in HARMFUL]
        self._injection = [re.compile(p, re.IGNORECASE) for p in INJECTION]
        self.calls = 0

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        self.calls += 1
        out = []
        for text in texts:
            harmful = 0.95 if any(p.search(text) for p in self._harmful) else 0.02
            injection = 0.95 if any(p.search(text) for p in self._injection) else 0.02
            out.append(
                {
                    "benign": max(0.0, 1 - harmful - injection),
                    "harmful": harmful,
                    "injection": injection,
                }
            )
        return out
