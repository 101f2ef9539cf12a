"""Validation of client input at the gateway: every field checked, every size bounded.

Each problem is a :class:`InvalidField` naming the field and why, answered as 422.
"""
from __future__ import annotations

import unicodedata
from typing import Any, Optional

from memesys.domain.formats import CATALOGUE, UnknownFormat, get_format
from memesys.domain.messages import GenerateMeme
from memesys.errors import ErrorCode, MemesysError

MAX_LABEL_CHARS = 100
MAX_SEED = 2**31 - 1
MAX_PAGE = 100
_FIELDS = {"topic", "format", "style", "audience", "seed", "fresh"}


class InvalidField(MemesysError, ValueError):
    """The gateway's error root: one field of the request is invalid (``invalid_field``)."""

    code = ErrorCode.INVALID_FIELD

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _text(body: dict, field: str, limit: int, required: bool = False) -> Optional[str]:
    value = body.get(field)
    if value is None:
        if required:
            raise InvalidField(field, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    value = " ".join(value.split())
    if required and not value:
        raise InvalidField(field, "must not be empty")
    if len(value) > limit:
        raise InvalidField(field, f"must be at most {limit} characters (got {len(value)})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in value):
        raise InvalidField(field, "must not contain control or format characters")
    return value or None


def parse_generate(body: Any, max_topic_chars: int, trace_id: str) -> GenerateMeme:
    if not isinstance(body, dict):
        raise InvalidField("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidField(unknown[0], f"is not a known field (known: {', '.join(sorted(_FIELDS))})")
    topic = _text(body, "topic", max_topic_chars, required=True)
    fmt = _text(body, "format", MAX_LABEL_CHARS)
    if fmt is not None:
        try:
            fmt = get_format(fmt).name
        except UnknownFormat:
            raise InvalidField("format", f"unknown format {fmt!r}; GET /v1/formats lists "
                                         f"the {len(CATALOGUE)} formats") from None
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidField("seed", f"must be an integer between 0 and {MAX_SEED}")
    fresh = body.get("fresh", False)
    if not isinstance(fresh, bool):
        raise InvalidField("fresh", "must be true or false")
    return GenerateMeme(topic=topic, format=fmt, style=_text(body, "style", MAX_LABEL_CHARS),
                        audience=_text(body, "audience", MAX_LABEL_CHARS), seed=seed,
                        fresh=fresh, trace_id=trace_id)


def parse_page(query: Any) -> tuple[int, Optional[str]]:
    raw = query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidField("limit", f"must be an integer between 1 and {MAX_PAGE}")
    cursor = query.get("cursor") or None
    if cursor is not None and len(cursor) > 200:
        raise InvalidField("cursor", "is not a cursor this server issued")
    return int(raw), cursor
