"""Text normalisation run before every rail: encodings, homoglyphs, invisible characters.

Attackers hide a request from classifiers and rules by writing it in base64, with Cyrillic
look-alike letters, or with zero-width characters between letters. The rails therefore look
at a normalised view of the text (the model still gets the original, or a redacted copy).

Why a hand-written confusables map: no Unicode-confusables package is installed in this
stack; NFKC already folds full-width, mathematical and compatibility forms, and the map
below covers the script look-alikes (Cyrillic, Greek, Armenian, Latin extensions) that NFKC
leaves alone — the ones used in practice to spell Latin words.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import unquote

# Script look-alikes -> Latin (after NFKC). Source: Unicode confusables.txt, the entries
# whose target is a single ASCII letter, restricted to scripts seen in homoglyph attacks.
_CONFUSABLES: dict[str, str] = {
    # Cyrillic lower case
    "а": "a",
    "в": "b",
    "е": "e",
    "ё": "e",
    "к": "k",
    "м": "m",
    "н": "h",
    "о": "o",
    "р": "p",
    "с": "c",
    "т": "t",
    "у": "y",
    "х": "x",
    "і": "i",
    "ї": "i",
    "ј": "j",
    "ѕ": "s",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ӏ": "l",
    "һ": "h",
    "ɡ": "g",
    "ѵ": "v",
    "ү": "y",
    "ь": "b",
    "г": "r",
    "п": "n",
    "ц": "u",
    "ш": "w",
    # Cyrillic upper case
    "А": "A",
    "В": "B",
    "Е": "E",
    "Ё": "E",
    "К": "K",
    "М": "M",
    "Н": "H",
    "О": "O",
    "Р": "P",
    "С": "C",
    "Т": "T",
    "У": "Y",
    "Х": "X",
    "І": "I",
    "Ї": "I",
    "Ј": "J",
    "Ѕ": "S",
    "Ԁ": "D",
    "Ԛ": "Q",
    "Ԝ": "W",
    "Ӏ": "I",
    "Һ": "H",
    "Ү": "Y",
    "Ѵ": "V",
    # Greek
    "α": "a",
    "β": "b",
    "γ": "y",
    "δ": "d",
    "ε": "e",
    "η": "n",
    "ι": "i",
    "κ": "k",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "χ": "x",
    "ω": "w",
    "ϲ": "c",
    "Α": "A",
    "Β": "B",
    "Ε": "E",
    "Ζ": "Z",
    "Η": "H",
    "Ι": "I",
    "Κ": "K",
    "Μ": "M",
    "Ν": "N",
    "Ο": "O",
    "Ρ": "P",
    "Τ": "T",
    "Υ": "Y",
    "Χ": "X",
    "Ϲ": "C",
    # Armenian
    "օ": "o",
    "ս": "u",
    "հ": "h",
    "ո": "n",
    "ց": "g",
    "զ": "q",
    "ա": "w",
    # Latin extensions and IPA
    "ı": "i",
    "ȷ": "j",
    "ɑ": "a",
    "ɩ": "i",
    "ɪ": "i",
    "ʀ": "r",
    "ʏ": "y",
    "ɴ": "n",
    "ʟ": "l",
    "ᴀ": "a",
    "ᴄ": "c",
    "ᴅ": "d",
    "ᴇ": "e",
    "ᴋ": "k",
    "ᴍ": "m",
    "ᴏ": "o",
    "ᴘ": "p",
    "ᴛ": "t",
    "ᴜ": "u",
    "ᴠ": "v",
    "ᴡ": "w",
    "ᴢ": "z",
    "ƅ": "b",
    "ɗ": "d",
}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)

# Leetspeak folding, applied only to the view the pattern rules read (never to the guard's
# view or to numbers a grounding check reads: "4" must stay a number there).
_LEET_TABLE = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
        "+": "t",
    }
)

_BASE64_SPAN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def _is_invisible(char: str) -> bool:
    """Format characters (zero-width, bidi controls, tags, soft hyphen) and selectors."""
    if char in "\n\t":
        return False
    cat = unicodedata.category(char)
    if cat == "Cf":
        return True
    code = ord(char)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or code == 0x034F


def strip_invisible(text: str) -> str:
    """Remove zero-width, bidi-control, tag and variation-selector characters."""
    if text.isascii():  # none of them is ASCII; skips a per-character Python loop
        return text
    return "".join(c for c in text if not _is_invisible(c))


_WORD = re.compile(r"\w+")


def fold_homoglyphs(text: str) -> str:
    """NFKC, then map script look-alikes to Latin letters.

    In mostly-Latin text every look-alike is folded; in text written mostly in another
    script (a genuine Russian or Greek message) only words that mix in Latin letters are,
    so real non-Latin words are left alone.
    """
    if text.isascii():  # ASCII is NFKC-stable and holds no look-alikes
        return text
    text = unicodedata.normalize("NFKC", text)
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return text
    ascii_letters = sum(1 for c in letters if c.isascii())
    if ascii_letters * 2 >= len(letters):
        return text.translate(_CONFUSABLE_TABLE)

    def _mixed(match: re.Match[str]) -> str:
        word = match.group(0)
        if any(c.isascii() and c.isalpha() for c in word):
            return word.translate(_CONFUSABLE_TABLE)
        return word

    return _WORD.sub(_mixed, text)


def fold_leet(text: str) -> str:
    """Leetspeak digits and symbols to letters (for pattern rules only)."""
    return text.translate(_LEET_TABLE)


def _decode_base64(span: str) -> str | None:
    padded = span + "=" * (-len(span) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not decoded:
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c in "\n\t")
    letters = sum(1 for c in decoded if c.isalpha())
    # Random-looking identifiers also decode; accept only text that reads like words.
    if printable / len(decoded) < 0.95 or letters / len(decoded) < 0.5 or " " not in decoded:
        return None
    return decoded


@dataclass(frozen=True)
class Normalised:
    """A normalised view of a text and what it took to get there.

    Attributes:
        text: the view the guard and the PII rules read.
        pattern_text: lower-cased, leet-folded, space-collapsed view for jailbreak rules.
        steps: transforms that changed something, e.g. ``["base64", "homoglyphs"]``.

    """

    text: str
    pattern_text: str
    steps: list[str] = field(default_factory=list)


def normalise(text: str, decode_base64: bool = True) -> Normalised:
    """Undo the usual obfuscations; pure and deterministic.

    Order: invisible characters, percent-encoding, base64 spans (decoded text replaces the
    span), then NFKC + confusables. Each step is recorded when it changed the text.
    """
    steps: list[str] = []
    current = strip_invisible(text)
    if current != text:
        steps.append("invisible")
    if _PERCENT.search(current):
        unquoted = unquote(current)
        if unquoted != current:
            steps.append("percent")
            current = unquoted
    if decode_base64:
        decoded_any = False

        def _sub(match: re.Match[str]) -> str:
            nonlocal decoded_any
            decoded = _decode_base64(match.group(0))
            if decoded is None:
                return match.group(0)
            decoded_any = True
            return strip_invisible(decoded)

        replaced = _BASE64_SPAN.sub(_sub, current)
        if decoded_any:
            steps.append("base64")
            current = replaced
    folded = fold_homoglyphs(current)
    if folded != current:
        steps.append("homoglyphs")
    pattern = _SPACES.sub(" ", fold_leet(folded.lower())).strip()
    return Normalised(text=folded, pattern_text=pattern, steps=steps)
