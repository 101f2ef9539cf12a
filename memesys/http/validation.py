"""Reading client input at the gateway: the JSON itself, then the models of
:mod:`memesys.http.schemas`, which check every field and bound every size.

Each problem is a :class:`InvalidField` naming the field and why, answered as 422; a body that
is not JSON (not UTF-8, nested deeper than :data:`MAX_JSON_DEPTH`, a number Python will not
read) is :class:`MalformedJson`, answered as 400. A message shows at most a short prefix of
what the client sent (:func:`shown`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from memesys.domain.formats import CATALOGUE
from memesys.domain.messages import GenerateMeme
from memesys.errors import ErrorCode, MemesysError
from memesys.http.schemas import (
    MAX_JSON_DEPTH,
    MAX_PAGE,
    MAX_SEED,
    MAX_SHOWN_CHARS,
    TEXT_PATTERN,
    MemeRequestBase,
)

MAX_KNOWN_ETAGS = 16  # of an If-None-Match: a browser sends one
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NESTING = re.compile(rb"[\[\]{}]")
_IMAGE_ETAG = re.compile(r'\s*(?:W/)?"([0-9a-f]{64})"\s*')
_TEXT = re.compile(TEXT_PATTERN)
Model = TypeVar("Model", bound=BaseModel)


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


# A field whose every refusal says the same, whatever pydantic's reason.
_REASONS = {
    "seed": f"must be an integer between 0 and {MAX_SEED}",
    "fresh": "must be true or false",
    "async": "must be true or false",
    "limit": f"must be an integer between 1 and {MAX_PAGE}",
    "cursor": "is not a cursor this server issued",
}


def invalid_field(exc: ValidationError, model: type[BaseModel]) -> InvalidField:
    """The first problem pydantic found, as the contract names it: the field and why."""
    problem = exc.errors(include_url=False)[0]
    kind, value = problem["type"], problem["input"]
    if not problem["loc"] or kind == "model_type":
        return InvalidField("body", "must be a JSON object")
    name = str(problem["loc"][0])
    if kind == "extra_forbidden":
        known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        return InvalidField(name[:MAX_SHOWN_CHARS], f"is not a known field (known: {known})")
    if kind == "missing":
        return InvalidField(name, "is required")
    if name in _REASONS:
        return InvalidField(name, _REASONS[name])
    if kind == "literal_error" and isinstance(value, str):  # the format
        return InvalidField(
            name,
            f"unknown format {shown(value)}; GET /v1/formats lists the {len(CATALOGUE)} formats",
        )
    if kind in ("string_type", "literal_error"):
        return InvalidField(name, "must be a string")
    if kind == "string_too_short" or (
        kind == "string_pattern_mismatch" and _TEXT.match(value) and not value.split()
    ):
        return InvalidField(name, "must not be empty")
    if kind == "string_too_long":
        limit = problem.get("ctx", {}).get("max_length")
        return InvalidField(name, f"must be at most {limit} characters (got {len(value)})")
    # the text pattern, or a lone surrogate (no valid string)
    return InvalidField(name, "must not contain control or format characters")


def validated(model: type[Model], data: Any) -> Model:
    """``data`` as ``model``, or :class:`InvalidField` naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_field(exc, model) from None


@functools.cache
def _parameters(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(f.alias or n for n, f in model.model_fields.items())


def query_of(model: type[Model], query: Mapping[str, str]) -> Model:
    """A URL query as ``model`` (the first value of each parameter it knows; others are
    ignored, as HTTP caches and proxies add their own)."""
    return validated(model, {name: query[name] for name in _parameters(model) if name in query})


def _collapsed(text: str | None) -> str | None:
    """Runs of whitespace as one space, none at the ends; blank is None."""
    return (" ".join(text.split()) or None) if text is not None else None


def parse_generate(body: Any, request: type[MemeRequestBase], trace_id: str) -> GenerateMeme:
    """The order a meme request's body makes (``request``: the gateway's configured model)."""
    valid = validated(request, body)
    return GenerateMeme(
        topic=" ".join(valid.topic.split()),
        format=valid.format,
        style=_collapsed(valid.style),
        audience=_collapsed(valid.audience),
        seed=valid.seed,
        fresh=valid.fresh,
        trace_id=trace_id,
    )


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
