"""The gateway's cache reader: what a maker does first, done by the gateway straight on Redis
before any engine is asked, whichever engine makes the meme.

A hit costs one trip to Redis (:class:`~memesys.storage.hits.HitReader`, on the event loop); a
miss is sent on with ``looked_up`` set, so the maker does not look again. A fresh order asks
instead whether the store answers: a meme that could not be saved is not made. The reader
needs a store, the cache key of an order and a few threads for the store's synchronous calls;
it shares the in-process engine's store when the daemon builds one (one view of whether Redis
is up), and has its own otherwise.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from memesys.config import Config
from memesys.config.capacity import Capacities
from memesys.domain.messages import GenerateMeme
from memesys.errors import ErrorCode
from memesys.pipeline.errors import MemeFailed
from memesys.pipeline.lm import stage_handles
from memesys.pipeline.program import load_configured
from memesys.pipeline.record import cache_key
from memesys.storage.connection import CLIENT_TIMEOUT_S
from memesys.storage.hits import HitReader, Unsure
from memesys.storage.memes import MemeStore

T = TypeVar("T")

# Threads for the store's synchronous calls (a fresh order's PING, a hit the one-trip read was
# unsure of); redis-py refuses a call past its 100 connections rather than waiting.
STORE_THREADS = 16


class CacheReader:
    """Looks an order up before any engine is asked; :meth:`close` when the gateway stops.
    ``key``: an order's cache key; ``owns_store``: close the store with the reader (False:
    the store's owner closes it)."""

    def __init__(
        self,
        store: MemeStore,
        key: Callable[[GenerateMeme], str],
        redis_url: str,
        owns_store: bool = False,
    ) -> None:
        self.store, self.key, self.owns_store = store, key, owns_store
        self.hits = HitReader(redis_url, store, CLIENT_TIMEOUT_S)
        self.pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="memesys-cache-reader")

    @classmethod
    def of(cls, cfg: Config, redis_url: str) -> CacheReader:
        """A reader with a store of its own, keying orders as every maker of ``cfg`` does."""
        handle_for = stage_handles(
            cfg.llm,
            cfg.pipeline.stage_timeout_s,
            redis_url,
            cfg.redis.key_prefix,
            Capacities.of(cfg).llm_processes,
        )
        program_hash = load_configured(cfg.pipeline).hash

        def key(order: GenerateMeme) -> str:
            return cache_key(order, handle_for("write"), program_hash)

        settings = cfg.redis
        store = MemeStore.open(
            redis_url,
            "gateway cache reader",
            settings.key_prefix,
            cfg.image_dir,
            settings.quarantine_ttl_s,
            settings.retry_backoff_initial_s,
            settings.retry_backoff_max_s,
            cfg.embedded_redis_dir,
        )
        return cls(store, key, redis_url, owns_store=True)

    async def _on_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args)
        )

    async def look_up(self, order: GenerateMeme) -> dict[str, Any] | None:
        """The cached meme for ``order`` (None: a miss), or for a fresh order whether the store
        answers (MemeFailed ``store_error`` if not)."""
        if order.fresh:
            if not await self._on_store(self.store.answers):
                raise MemeFailed(ErrorCode.STORE_ERROR, "the store is down; no meme was made")
            return None
        key = self.key(order)
        read = await self.hits.cached(key)
        meme = await self._on_store(self.store.cached, key) if isinstance(read, Unsure) else read
        return None if meme is None else {**meme, "cached": True, "trace_id": order.trace_id}

    async def close(self) -> None:
        await self.hits.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.owns_store:
            self.store.close()
