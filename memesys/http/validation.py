"""Validation of client input at the gateway: every field checked, every size bounded.

Each problem is a :class:`InvalidField` naming the field and why, answered as 422; a body that
is not JSON (not UTF-8, nested deeper than :data:`MAX_JSON_DEPTH`, a number Python will not
read) is :class:`MalformedJson`, answered as 400. A message shows at most a short prefix of
what the client sent (:func:`shown`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Literal, overload

from memesys.domain.formats import CATALOGUE, UnknownFormat, get_format
from memesys.domain.messages import GenerateMeme
from memesys.errors import ErrorCode, MemesysError

MAX_LABEL_CHARS = 100
MAX_SEED = 2**31 - 1
MAX_PAGE = 100
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; a meme request needs 1
MAX_SHOWN_CHARS = 32  # of a client's value quoted back in an error message
MAX_KNOWN_ETAGS = 16  # of an If-None-Match: a browser sends one
_FIELDS = {"topic", "format", "style", "audience", "seed", "fresh"}
_ASCII_INT = re.compile(r"[0-9]{1,9}")  # not str.isdigit(): "²" and "٣" are digits too
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NESTING = re.compile(rb"[\[\]{}]")
_IMAGE_ETAG = re.compile(r'\s*(?:W/)?"([0-9a-f]{64})"\s*')


def shown(value: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` quoted for an error message: at most ``limit`` characters of it."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + "…"


class MalformedJson(MemesysError, ValueError):
    """The body is not a JSON document the gateway reads (``malformed_json``, 400)."""

    code = ErrorCode.MALFORMED_JSON


def _not_a_number(name: str) -> Any:
    raise MalformedJson(f"the body is not valid JSON: {name} is not a JSON number")


def _nesting_exceeds(raw: bytes, limit: int) -> bool:
    depth = 0
    for bracket in _JSON_NESTING.finditer(_JSON_STRINGS.sub(b"", raw)):
        depth += 1 if bracket.group() in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


def parse_json(raw: bytes) -> Any:
    """The JSON document in ``raw`` (UTF-8, at most :data:`MAX_JSON_DEPTH` deep), or
    :class:`MalformedJson` saying why not, without quoting the body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedJson("the body is not valid JSON: it is not UTF-8") from None
    if _nesting_exceeds(raw, MAX_JSON_DEPTH):
        raise MalformedJson(
            f"the body is not valid JSON for this API: it nests deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        return json.loads(text, parse_constant=_not_a_number)
    except MalformedJson:
        raise
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):  # an integer of more than 4,300 digits
        raise MalformedJson(
            "the body is not valid JSON for this API: a number is too long"
        ) from None


class InvalidField(MemesysError, ValueError):
    """The gateway's error root: one field of the request is invalid (``invalid_field``)."""

    code = ErrorCode.INVALID_FIELD

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@overload
def _text(body: dict[str, Any], field: str, limit: int, required: Literal[True]) -> str: ...
@overload
def _text(body: dict[str, Any], field: str, limit: int, required: bool = False) -> str | None: ...
def _text(body: dict[str, Any], field: str, limit: int, required: bool = False) -> str | None:
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
        raise InvalidField(
            unknown[0][:MAX_SHOWN_CHARS],
            f"is not a known field (known: {', '.join(sorted(_FIELDS))})",
        )
    topic = _text(body, "topic", max_topic_chars, required=True)
    fmt = _text(body, "format", MAX_LABEL_CHARS)
    if fmt is not None:
        try:
            fmt = get_format(fmt).name
        except UnknownFormat:
            raise InvalidField(
                "format",
                f"unknown format {shown(fmt)}; GET /v1/formats lists the {len(CATALOGUE)} formats",
            ) from None
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidField("seed", f"must be an integer between 0 and {MAX_SEED}")
    fresh = body.get("fresh", False)
    if not isinstance(fresh, bool):
        raise InvalidField("fresh", "must be true or false")
    return GenerateMeme(
        topic=topic,
        format=fmt,
        style=_text(body, "style", MAX_LABEL_CHARS),
        audience=_text(body, "audience", MAX_LABEL_CHARS),
        seed=seed,
        fresh=fresh,
        trace_id=trace_id,
    )


def parse_page(query: Any) -> tuple[int, str | None]:
    raw = query.get("limit", "20")
    if not _ASCII_INT.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidField("limit", f"must be an integer between 1 and {MAX_PAGE}")
    cursor = query.get("cursor") or None
    if cursor is not None and len(cursor) > 200:
        raise InvalidField("cursor", "is not a cursor this server issued")
    return int(raw), cursor


def known_etags(header: str | None) -> tuple[str, ...]:
    """The image digests a client holds, from its ``If-None-Match`` (compared weakly, as RFC
    9110 says for it): ``("*",)`` for any; a tag that is no image's digest can match nothing
    and is dropped, and only the first :data:`MAX_KNOWN_ETAGS` are read."""
    if header is None:
        return ()
    if header.strip() == "*":
        return ("*",)
    parts = header.split(",", MAX_KNOWN_ETAGS)[:MAX_KNOWN_ETAGS]
    return tuple(tag.group(1) for tag in map(_IMAGE_ETAG.fullmatch, parts) if tag)
