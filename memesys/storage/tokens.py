"""API tokens: made, listed and revoked by ``memesys-admin token``, verified by the gateway.

A token is ``<name>.<secret>``: the name says whose it is (the gateway's per-client limit is
keyed by it, and it is what ``token revoke`` takes), the secret is 32 random bytes. Redis
keeps, in the hash ``<prefix>:tokens``, each name's SHA-256 of its token and when it was made:
never the token itself, which is printed once. A plain SHA-256 is enough for a secret of 256
random bits: stretching (scrypt, bcrypt) slows an offline search of guessable passwords, and
there is nothing here to search, while the gateway checks a token on every request. The
presented token's digest is compared with the stored one by :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from typing import Any

import redis
import redis.asyncio

from memesys.storage.errors import StoreError

log = logging.getLogger("memesys.storage.tokens")

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 128  # a name of 64, the dot, 43 characters of secret


class TokenError(ValueError):
    """A token command that cannot be done (a bad name, a name already taken)."""


def key(prefix: str) -> str:
    return f"{prefix}:tokens"


def valid_name(name: str) -> bool:
    return NAME.fullmatch(name) is not None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def name_of(token: str) -> str | None:
    """The name a token claims (None: not shaped like a token at all)."""
    name, dot, secret = token.partition(".")
    if not dot or not secret or len(token) > MAX_TOKEN_CHARS or not valid_name(name):
        return None
    return name


def _record(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored record, or None when there is none or it is not one (logged)."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        if isinstance(record, dict) and isinstance(record.get("sha256"), str):
            return record
    except ValueError:
        pass
    log.warning("a token record is not valid JSON with a sha256: refused until revoked")
    return None


class Tokens:
    """The token commands, on a synchronous client of the daemon's Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.key = client, key(prefix)

    def create(self, name: str) -> str:
        """A new token for ``name``, returned once (only its digest is kept)."""
        if not valid_name(name):
            raise TokenError(
                f"a token name is 1 to 64 letters, digits, '-' or '_', not {name[:64]!r}"
            )
        token = f"{name}.{secrets.token_urlsafe(SECRET_BYTES)}"
        record = json.dumps({"sha256": digest(token), "created_at": time.time()})
        if not self.client.hsetnx(self.key, name, record):
            raise TokenError(
                f"a token named {name!r} exists: revoke it first, or pick another name"
            )
        return token

    def list(self) -> list[dict[str, Any]]:
        """Every token's name and creation time (Unix seconds; None if unreadable), by name."""
        rows = []
        for name, raw in sorted(self.client.hgetall(self.key).items()):
            record = _record(raw)
            created = record.get("created_at") if record else None
            rows.append(
                {"name": name.decode() if isinstance(name, bytes) else name, "created_at": created}
            )
        return rows

    def revoke(self, name: str) -> bool:
        """Forget ``name``'s token; False if there was none."""
        return bool(self.client.hdel(self.key, name))


class TokenReader:
    """Verifies tokens for the gateway, on an asyncio client of the same Redis."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.key = key(prefix)
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def verify(self, token: str) -> str | None:
        """The name of a valid token; None for a forged, revoked or misshapen one. Raises
        StoreError when Redis cannot tell."""
        name = name_of(token)
        if name is None:
            return None
        try:
            raw = await self.client.hget(self.key, name)
        except redis.RedisError as exc:
            raise StoreError(f"the token store is unavailable: {exc}") from exc
        record = _record(raw)
        if record is None or not hmac.compare_digest(digest(token), record["sha256"]):
            return None
        return name

    async def close(self) -> None:
        await self.client.aclose()
