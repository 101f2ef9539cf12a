"""Per-client request limits (``gateway.client_rate_per_minute``), shared through Redis.

Every request under ``/v1/`` counts against its client (``token:<name>``, or ``addr:<ip>``
when auth is off: see :mod:`memesys.http.auth`) in a moving window of one minute, the
``limits`` library's atomic Lua script on the daemon's Redis, so every gateway sharing that
Redis counts a client once. Past the limit the request is refused with 429 ``rate_limited``
and a ``Retry-After`` of the seconds until the oldest request leaves the window; other
clients are unaffected. When Redis cannot count, the answer is the store's 503: a limit that
silently stops limiting would be no limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import redis.asyncio
from aiohttp import web
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from memesys.errors import ErrorCode
from memesys.http.responses import error

log = logging.getLogger("memesys.http")

TIMEOUT_S = 0.5  # a request waits at most this for Redis to count it


class ClientLimits:
    """``per_minute`` requests for each client, counted on the Redis at ``redis_url`` under
    ``<key_prefix>:client-limits``; :meth:`close` when the gateway stops."""

    def __init__(self, per_minute: int, redis_url: str, key_prefix: str) -> None:
        self.per_minute = per_minute
        self.item = RateLimitItemPerMinute(per_minute)
        self.pool = redis.asyncio.ConnectionPool.from_url(
            redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        # The client is the pool's (a unix socket too); ``limits`` types its options narrower
        # than redis-py's constructor, which takes the pool.
        client_options: dict[str, Any] = {"connection_pool": self.pool}
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{key_prefix}:client-limits",
            wrap_exceptions=True,
            **client_options,
        )
        self.window = MovingWindowRateLimiter(storage)

    async def refusal(self, client: str) -> web.Response | None:
        """None when ``client`` may go on (the request is counted), else the answer: 429 with
        its Retry-After, or 503 when Redis cannot count."""
        try:
            if await self.window.hit(self.item, client):
                return None
            stats = await self.window.get_window_stats(self.item, client)
        except (StorageError, redis.RedisError, OSError) as exc:
            log.warning("the per-client limit could not be counted (answered 503): %s", exc)
            return error(ErrorCode.STORE_ERROR)
        return error(
            ErrorCode.RATE_LIMITED,
            f"at most {self.per_minute} requests a minute per client; retry later",
            retry_after=max(stats.reset_time - time.time(), 0.0),
        )

    async def close(self) -> None:
        await self.pool.aclose()
