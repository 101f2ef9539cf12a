"""What a stored record must look like to be served: the checks behind the quarantine.

Each check returns ``None`` for a good record or a short reason (never the record's content:
reasons reach the log and the quarantine list). The store writes only records that pass, so a
record that fails was corrupted behind its back (a partial restore, a person's edit, a bug in
another version): it is quarantined, never served and never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from typing import Any

from memesys.domain.ids import valid_id
from memesys.domain.images import image_ref, valid_digest
from memesys.domain.messages import GenerateMeme

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TRAILER = b"IEND\xaeB`\x82"


class Number:
    """A field's JSON type: a finite number (an int or a float, never a bool)."""


# The fields every meme served from the store needs (the contract's, minus those added when it
# is served: cached, trace_id, timings), and their JSON types.
MEME_FIELDS: dict[str, type] = {
    "id": str,
    "topic": str,
    "format": str,
    "top_text": str,
    "bottom_text": str,
    "image_url": str,
    "created_at": Number,
    "scores": dict,
    "verification": dict,
    "provider": dict,
}
TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
OPEN_STATES = ("queued", "running")
TASK_FIELDS: dict[str, type] = {
    "id": str,
    "status": str,
    "stage": str,
    "progress": Number,
    "created_at": Number,
    "updated_at": Number,
}
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(GenerateMeme)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fields_problem(record: Any, fields: dict[str, type]) -> str | None:
    if not isinstance(record, dict):
        return f"not a JSON object but a JSON {type(record).__name__}"
    for name, kind in fields.items():
        value = record.get(name)
        if kind is Number:
            if not _number(value):
                return f"field {name!r} is missing or not a finite number"
        elif not isinstance(value, kind):
            return f"field {name!r} is missing or not a {kind.__name__}"
    return None


def packed(record: str) -> bytes:
    """A meme record as Redis keeps it: zlib-compressed JSON, about 40 % of the text (the
    record is most of what a meme costs Redis's memory beside its event log)."""
    return zlib.compress(record.encode(), 6)


def parse_json(raw: bytes) -> tuple[Any, str | None]:
    """The decoded JSON (of :func:`packed` bytes too: JSON never starts with zlib's "x")
    and None, or None and why it does not decode."""
    if raw[:1] == b"x":
        try:
            raw = zlib.decompress(raw)
        except zlib.error as exc:
            return None, f"not a valid packed record ({exc})"
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return None, f"not valid JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})"


def meme_problem(meme_id: str, meme: Any) -> str | None:
    """Why ``meme`` (decoded) cannot be the record of ``meme_id``, or None. Its ``image`` (the
    digest and size of its PNG file) is checked when present: a record without one was saved
    before PNGs left Redis, and its PNG is still the key ``{p}:png:{id}``."""
    problem = _fields_problem(meme, MEME_FIELDS)
    if problem is None and meme["id"] != meme_id:
        problem = "its id is not the id it is stored under"
    if problem is None and "image" in meme:
        image = meme["image"]
        if not (
            isinstance(image, dict)
            and valid_digest(image.get("sha256"))
            and isinstance(image.get("bytes"), int)
            and not isinstance(image["bytes"], bool)
        ):
            problem = "its image is not {sha256, bytes}"
    return problem


def image_problem(meme: dict[str, Any], png: bytes) -> str | None:
    """Why ``meme``'s ``image`` does not describe ``png`` (a meme saved now must have one), or
    None."""
    if meme.get("image") != image_ref(png):
        return "its image is missing or is not the SHA-256 and size of its PNG"
    return None


def png_problem(png: bytes) -> str | None:
    """Why ``png`` is not a whole PNG file, or None (signature and IEND trailer)."""
    if not png.startswith(PNG_SIGNATURE):
        return "not a PNG (no PNG signature)"
    if not png.endswith(PNG_TRAILER):
        return "a truncated PNG (no IEND trailer)"
    return None


def cache_problem(raw: bytes) -> str | None:
    """Why a cache entry's value is not a meme id, or None."""
    try:
        meme_id = raw.decode("ascii")
    except UnicodeDecodeError:
        return "not an ASCII meme id"
    return None if valid_id(meme_id) else "not a valid meme id"


def task_problem(task_id: str, task: Any) -> str | None:
    """Why ``task`` (decoded) cannot be the record of ``task_id``, or None. An open task must
    carry a request the runner can make a meme from."""
    problem = _fields_problem(task, TASK_FIELDS)
    if problem is not None:
        return problem
    if task["id"] != task_id:
        return "its id is not the id it is stored under"
    if task["status"] not in TASK_STATES:
        return "its status is not a task state"
    request = task.get("request")
    if task["status"] in OPEN_STATES or request is not None:
        if not isinstance(request, dict) or not set(request) <= _REQUEST_FIELDS:
            return "its request is missing or has unknown fields"
        try:
            order = GenerateMeme(**request)
        except TypeError:
            return "its request has no topic"
        if not isinstance(order.topic, str) or not order.topic:
            return "its request has no topic"
    if "meme_id" in task and not valid_id(task["meme_id"]):
        return "its meme_id is not a valid id"
    error = task.get("error")
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        return "its error is not {code, message}"
    return None
