"""Who may call the API (``gateway.auth``), and who the client is for its per-client limit.

With ``gateway.auth = "required"`` every request under ``/v1/`` and to ``/metrics`` carries
``Authorization: Bearer <token>`` (a token of ``memesys-admin token create NAME``); a missing,
malformed, forged or revoked one is answered 401 ``unauthorized`` with ``WWW-Authenticate:
Bearer``. ``/healthz``, ``/readyz``, ``/openapi.json`` and the page at ``/`` (which asks for a
token itself) need none. A verified token is trusted for :data:`VERIFIED_FOR_S` without asking
Redis again: the bound on how long a revoked token still works. When Redis cannot tell, the
answer is the store's 503 (a token is never let through unchecked).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from memesys.errors import ErrorCode
from memesys.http.responses import error

# A token -> its name, None when it is no valid token; raises a MemesysError when it cannot tell.
Verify = Callable[[str], Awaitable[str | None]]

VERIFIED_FOR_S = 5.0  # a revoked token is refused within this
MAX_VERIFIED = 1024  # tokens remembered at once (the oldest checked is forgotten first)
MAX_HEADER_CHARS = 256
REALM = 'Bearer realm="memesys"'


def guarded(route: str) -> bool:
    """Whether ``route`` (a canonical path) needs a token when auth is required."""
    return route.startswith("/v1/") or route == "/metrics"


def unauthorized(message: str, problem: str | None = None) -> web.Response:
    """401 with the challenge; ``problem``: RFC 6750's error code, ``invalid_request`` (the
    header is not ``Bearer <token>``) or ``invalid_token`` (forged, revoked, never made)."""
    challenge = f'{REALM}, error="{problem}"' if problem else REALM
    return error(ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


class Auth:
    """``required``: check tokens with ``verify``; else every client is its address."""

    def __init__(
        self,
        required: bool,
        verify: Verify | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if required and verify is None:
            raise ValueError('gateway.auth = "required" needs a token store to verify with')
        self.required, self.verify, self.clock = required, verify, clock
        self.verified: dict[str, tuple[str, float]] = {}  # token digest -> (name, until)

    async def client(self, request: web.Request) -> str | web.Response:
        """The client's key for the per-client limit, ``token:<name>`` (``addr:<address>``
        when auth is off: a token is not checked then, so it cannot name the client), or the
        401 answer. Raises what ``verify`` raises."""
        if not self.required or self.verify is None:
            return f"addr:{request.remote}"
        header = request.headers.get("Authorization")
        if header is None:
            return unauthorized(
                "a token is required: send Authorization: Bearer <token> "
                "(memesys-admin token create NAME makes one)"
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(header) > MAX_HEADER_CHARS:
            return unauthorized(
                "the Authorization header must be: Bearer <token>", "invalid_request"
            )
        name = await self._name(token)
        if name is None:
            return unauthorized("the token is not valid (revoked, or never made)", "invalid_token")
        return f"token:{name}"

    async def _name(self, token: str) -> str | None:
        """The token's name, from memory while its last check is fresh, else from ``verify``
        (only valid tokens are remembered: a new one works at once)."""
        assert self.verify is not None
        key, now = hashlib.sha256(token.encode()).hexdigest(), self.clock()
        known = self.verified.get(key)
        if known is not None and known[1] > now:
            return known[0]
        name = await self.verify(token)
        self.verified.pop(key, None)
        if name is not None:
            if len(self.verified) >= MAX_VERIFIED:
                self.verified.pop(next(iter(self.verified)))
            self.verified[key] = (name, now + VERIFIED_FOR_S)
        return name
