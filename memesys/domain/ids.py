"""Identifiers of memes and tasks: how they are made and what a valid one looks like.

One pattern for both, shared by the store (an id becomes part of a Redis key), the gateway
(an invalid id is a 404 before any actor is asked) and the OpenAPI document.
"""

from __future__ import annotations

import re
import secrets

ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID_RE = re.compile(ID_PATTERN)


def new_id() -> str:
    """A fresh meme or task id: 16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


def valid_id(value: object) -> bool:
    """Whether ``value`` may become part of a key; anything else is simply never found."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
