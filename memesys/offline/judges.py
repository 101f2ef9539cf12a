"""The offline writer's three verifiers: small, documented, deterministic heuristics.

They are deliberately simple and non-exhaustive (word lists and regular expressions, not a
moderation model): good enough to refuse the clear cases offline and to exercise the verdict
plumbing exactly as a real model's answers would. Each reads the topic and every slot text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memesys.domain.formats import slot_problem
from memesys.offline.text import SlotLine, mentions

# Confidence of a word-list verdict: a hit is near-certain; "no hit" only means no listed term.
HIT_CONFIDENCE = 0.95
CLEAN_CONFIDENCE = 0.8

_GROUPS = (
    r"(?:jews|muslims|christians|hindus|sikhs|blacks|whites|asians|latinos|mexicans|"
    r"arabs|africans|immigrants|refugees|gays|lesbians|trans people|women|men|disabled "
    r"people)"
)


def _words(*alternatives: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive alternatives."""
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I)


# Category -> patterns. Each is a short, clearly-offensive sample, not a complete list.
CATEGORIES: dict[str, tuple[re.Pattern[str], ...]] = {
    "hate": (
        # Slurs (plural forms included); kept to unambiguous ones to avoid false positives.
        _words(
            r"nigg(?:er|a)s?",
            r"faggots?",
            r"kikes?",
            r"chinks?",
            r"spics?",
            r"wetbacks?",
            r"gooks?",
            r"ragheads?",
            r"towelheads?",
            r"trannies",
            r"tranny",
            r"retards?",
        ),
        _words(r"heil hitler", r"sieg heil", r"white power", r"race war", r"gas the \w+"),
        re.compile(
            rf"\b(?:kill|gas|exterminate|eradicate|deport|lynch)\s+(?:all\s+)?"
            rf"(?:the\s+)?{_GROUPS}\b",
            re.I,
        ),
        re.compile(
            rf"\b{_GROUPS}\s+are\s+(?:vermin|animals|subhuman|parasites|rats|"
            r"cockroaches|inferior|a disease)\b",
            re.I,
        ),
    ),
    "harassment": (
        _words(
            r"kill (?:yo)?urself",
            r"kys",
            r"go die",
            r"hope you die",
            r"you should die",
            r"end yourself",
            r"neck yourself",
            r"drink bleach",
            r"nobody loves you",
            r"you(?:'re| are) worthless",
            r"i know where you live",
            r"i will find you",
            r"doxx?(?:ing|ed)?",
        ),
    ),
    "sexual content": (
        _words(
            r"porn\w*",
            r"nudes?",
            r"naked",
            r"sex",
            r"sexual",
            r"sexy",
            r"nsfw",
            r"xxx",
            r"horny",
            r"orgasms?",
            r"blowjobs?",
            r"handjobs?",
            r"onlyfans",
            r"erotic\w*",
            r"genitals?",
            r"penis",
            r"vagina",
            r"boobs",
            r"tits",
        ),
    ),
    "violence": (
        _words(
            r"shoot(?:s|ing)?",
            r"stab(?:s|bed|bing)?",
            r"bomb(?:s|ed|ing)?",
            r"murder\w*",
            r"behead\w*",
            r"massacre\w*",
            r"strangl\w*",
            r"tortur\w*",
            r"kidnap\w*",
        ),
        re.compile(r"\bhow to (?:kill|hurt|poison|attack|beat up)\b", re.I),
        re.compile(
            r"\bkill(?:s|ed|ing)?\s+(?:my|your|his|her|their|the|a|all)?\s*"
            r"(?:neighbou?rs?|wife|husband|boss|teacher|kids?|children|family|people|"
            r"him|her|them|everyone|someone)\b",
            re.I,
        ),
    ),
}

# Private data about people: what each pattern is called in a concern.
PRIVATE_DATA: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an email address", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("an SSN-like ID number", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    # 9+ digits with up to two spaces/dots/dashes/brackets between them: phones, IDs, cards.
    ("a phone or ID number", re.compile(r"(?<![\w.])\+?\(?\d(?:[ .()-]{0,2}\d){8,}(?![\w])")),
    (
        "a street address",
        re.compile(
            r"\b\d{1,5}[a-z]?\s+(?:[a-z]+\.?\s+){1,3}(?:street|st|avenue|ave|road|rd|boulevard|blvd"
            r"|lane|ln|drive|dr|court|ct|way|place|pl|terrace|square|sq|crescent)\b\.?",
            re.I,
        ),
    ),
)


@dataclass(frozen=True)
class Judgement:
    """What a heuristic verifier answers: the reasons, the verdict, and its confidence."""

    reasons: list[str]
    verdict: str
    confidence: float


def _places(topic: str, slots: list[SlotLine]) -> list[tuple[str, str]]:
    """(where, text) for the topic and every slot text, so reasons say where a hit is."""
    return [("the topic", topic)] + [(f"slot {s.name!r}", s.text) for s in slots]


def appropriateness(topic: str, slots: list[SlotLine]) -> Judgement:
    """Failed when any category pattern or private-data pattern matches the topic or a text."""
    concerns = []
    for where, text in _places(topic, slots):
        for category, patterns in CATEGORIES.items():
            for pattern in patterns:
                if match := pattern.search(text):
                    concerns.append(f"{category}: {match.group(0)!r} in {where}")
        for what, pattern in PRIVATE_DATA:
            if pattern.search(text):
                concerns.append(f"private data: {what} in {where}")
    if concerns:
        return Judgement(concerns, "failed", HIT_CONFIDENCE)
    return Judgement([], "passed", CLEAN_CONFIDENCE)


# Factual-claim signals and how much each raises the risk that the meme states a doubtful fact.
CLAIM_SIGNALS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "a named person's claim",
        0.5,
        re.compile(
            r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+\s+(?:said|says|claimed|claims|announced|tweeted|"
            r"admitted|confirmed|revealed|stated|wrote|told|promised|invented|founded|died|won|"
            r"lost|bought|sold)\b"
        ),
    ),
    ("a percentage", 0.3, re.compile(r"\b\d+(?:\.\d+)?\s*(?:%|percent\b)", re.I)),
    ("a year", 0.2, re.compile(r"\b(?:1[6-9]|20)\d{2}\b")),
    (
        "a big number",
        0.2,
        re.compile(
            r"\b\d{1,3}(?:,\d{3})+\b|\b\d+(?:\.\d+)?\s*(?:thousand|million|billion|trillion|bn)\b"
            r"|\b\d{5,}\b",
            re.I,
        ),
    ),
)
# Risk at or above which the claims fail the meme.
CLAIM_FAIL_RISK = 0.5


def factuality(topic: str, slots: list[SlotLine]) -> Judgement:
    """Flags names followed by claim verbs, percentages, years and big numbers. The risk is
    1 - prod(1 - weight) over the flags found; at CLAIM_FAIL_RISK or above the verdict fails
    with confidence = risk, below it passes with confidence 1 - risk (flags listed as notes)."""
    flagged, safe = [], 1.0
    for where, text in _places(topic, slots):
        for what, weight, pattern in CLAIM_SIGNALS:
            for match in pattern.finditer(text):
                flagged.append(f"{what}: {match.group(0)!r} in {where}")
                safe *= 1 - weight
    risk = round(1 - safe, 3)
    if risk >= CLAIM_FAIL_RISK:
        return Judgement(flagged, "failed", risk)
    return Judgement(flagged, "passed", round(1 - risk, 3))


def instruction_following(slots: list[SlotLine], style: str, audience: str) -> Judgement:
    """Measured rules (empty texts, texts over their max chars; a text beyond the format's
    slots is listed with max 0) fail with certainty; a requested style or audience none of
    whose words appear in the texts fails with confidence 0.7 (a real model can honour a tone
    without naming it, this heuristic cannot tell)."""
    violations = [
        problem for slot in slots if (problem := slot_problem(slot.name, slot.max_chars, slot.text))
    ]
    measured = bool(violations)
    written = " ".join(s.text for s in slots)
    for what, wanted in (("style", style), ("audience", audience)):
        if wanted and not mentions(wanted, written):
            violations.append(f"the requested {what} {wanted!r} does not show in the texts")
    if violations:
        return Judgement(violations, "failed", 1.0 if measured else 0.7)
    return Judgement([], "passed", 0.75)
