"""Identifiers of memes and tasks, and of a position in the list of memes (a page cursor):
how they are made and what a valid one looks like.

One pattern for both ids, shared by the store (an id becomes part of a Redis key), the gateway
(an invalid id is a 404 before any actor is asked) and the OpenAPI document. A cursor is as
plain: ``<created_at>~<id>`` of the last meme of a page, so its pattern says exactly which
strings are cursors (any of them is a position the store can page from).
"""

from __future__ import annotations

import re
import secrets

ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID_RE = re.compile(ID_PATTERN)
# A finite decimal (Python's repr of a Unix time; a two-digit exponent keeps it finite), "~",
# an id. "~" is in neither, and unreserved in URLs: a cursor needs no escaping in a query.
CURSOR_PATTERN = r"[0-9]{1,17}(?:\.[0-9]{1,17})?(?:e[+-][0-9]{2})?~" + ID_PATTERN
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def new_id() -> str:
    """A fresh meme or task id: 16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


def valid_id(value: object) -> bool:
    """Whether ``value`` may become part of a key; anything else is simply never found."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def page_cursor(created_at: float, meme_id: str) -> str:
    """The cursor of the position just after the meme ``meme_id`` made at ``created_at``."""
    return f"{created_at!r}~{meme_id}"


def cursor_position(cursor: str) -> tuple[float, str] | None:
    """The (created_at, id) a cursor names, or None if ``cursor`` is not one."""
    if _CURSOR_RE.fullmatch(cursor) is None:
        return None
    created_at, meme_id = cursor.split("~")
    return float(created_at), meme_id
