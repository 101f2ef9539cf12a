"""Text helpers shared by the offline writer's heuristics (writing, verifying, scoring, refining).

One place for word splitting, stemming, clipping and the slot-line parser, so every offline
stage reads a prompt and measures a text the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# A phrase (topic, style, audience) shortened to fit a template or a prefix keeps this many chars.
SHORT_PHRASE_CHARS = 24
WORD = re.compile(r"[a-z0-9+#']+")
STOP = frozenset(
    "a an and any are as at be but by for from in into is it its of on or so that the their "
    "them then this to with who what when one two".split()
)
# "1. name (max N chars): text": WriteCaption's slot listing (text = the hint) and a draft's
# slot texts (text = what is written) share this shape.
_SLOT_LINE = re.compile(r"^\s*\d+\.\s+(\w+)\s+\(max (\d+) chars\)(?::[ \t]?(.*))?$", re.M)


@dataclass(frozen=True)
class SlotLine:
    """One slot as a prompt lists it: name, character limit, and its hint or text."""

    name: str
    max_chars: int
    text: str


def read_slots(listing: str) -> list[SlotLine]:
    """Every slot line of a prompt field, in order; other lines are ignored."""
    return [
        SlotLine(name, int(limit), (text or "").strip())
        for name, limit, text in _SLOT_LINE.findall(listing)
    ]


def digest(*parts: object) -> bytes:
    """A stable key: Python's hash() is salted per process, sha256 is not."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) derived from ``parts``."""
    return int.from_bytes(digest(*parts)[:4], "big") / 2**32


def stem(word: str) -> str:
    """A crude plural/possessive strip: enough to match "cats" with "cat's" and "cat"."""
    word = word.removesuffix("'s").strip("'")
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def stems(text: str) -> set[str]:
    """The content words of ``text``, stemmed, without stop words or single letters."""
    return {stem(w) for w in WORD.findall(text.lower()) if w not in STOP and len(w) > 1}


def coverage(wanted: str, text: str) -> float:
    """The share of ``wanted``'s content words that show in ``text``, derived forms included
    ("sarcastic" shows in "sarcastically"); 1.0 when ``wanted`` has none."""
    asked, written = stems(wanted), stems(text)
    if not asked:
        return 1.0
    return sum(any(w.startswith(s) for w in written) for s in asked) / len(asked)


def mentions(wanted: str, text: str) -> bool:
    """Whether any content word of ``wanted`` shows in ``text`` (see coverage); trivially true
    when ``wanted`` has none (nothing to show)."""
    return coverage(wanted, text) > 0


def clean(text: str) -> str:
    """Whitespace collapsed and trailing sentence punctuation dropped."""
    return " ".join(text.split()).rstrip(".!?")


def clip(text: str, limit: int) -> str:
    """Cut at the last word boundary within ``limit``, dropping a dangling little word like
    "the" or "on" (hard cut only for a single over-long word)."""
    if len(text) <= limit:
        return text
    words = text[: limit + 1].split(" ")[:-1]
    while len(words) > 1 and words[-1].lower() in STOP:
        words.pop()
    return " ".join(words).rstrip(" ,;:-") or text[:limit]


def capital(text: str) -> str:
    """First letter upper-cased, the rest untouched (unlike str.capitalize)."""
    return text[:1].upper() + text[1:]
