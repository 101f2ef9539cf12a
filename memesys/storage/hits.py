"""A cache hit in one Redis round trip, on the event loop.

The gateway answers a cached meme before any engine is asked. Through
:meth:`~memesys.storage.memes.MemeStore.cached` that is two reads on the synchronous client,
each handed to a thread: most of a hit's CPU in the gateway (``python -m bench.ab``, table
3b). Here one script reads the entry and the meme it names, on the asyncio client. Only a
clean hit or a clean miss is answered here; anything else (a corrupt entry or record, a key of
the wrong type, Redis failing) is :data:`UNSURE`, for ``MemeStore.cached`` to handle: it
quarantines poison records and keeps the fail-fast view of Redis's availability.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import redis
import redis.asyncio

from memesys.storage.availability import DOWN_ERRORS
from memesys.storage.memes import MemeStore
from memesys.storage.records import cache_problem, meme_problem, parse_json


class Unsure(enum.Enum):
    """What the one-trip read answers when it cannot answer cleanly."""

    UNSURE = "unsure"


UNSURE: Final = Unsure.UNSURE

# KEYS[1]: the cache entry; ARGV[1]: the prefix of meme records. An entry too long to be an id
# is returned alone (a miss to the reader, corrupt to MemeStore); a missing meme too.
_HIT = """
local id = redis.call('GET', KEYS[1])
if not id then return {} end
if string.len(id) > 64 then return {id} end
return {id, redis.call('GET', ARGV[1] .. id)}
"""


class HitReader:
    """Reads cache hits of ``store``'s keys with an asyncio client of the same Redis."""

    def __init__(self, url: str, store: MemeStore, timeout_s: float) -> None:
        self.store = store
        self.client = redis.asyncio.Redis.from_url(
            url, decode_responses=False, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.script = self.client.register_script(_HIT)

    async def cached(self, key: str) -> dict[str, Any] | Unsure | None:
        """The meme cached for key, None for a miss, or UNSURE."""
        if not self.store.availability.up:
            return UNSURE  # MemeStore fails fast, or probes, while Redis is down
        entry, prefix = self.store.hit_keys(key)
        try:
            found = await self.script(keys=[entry], args=[prefix])
        except DOWN_ERRORS as exc:  # the store's view too: it fails fast from now on
            self.store.availability.failed(exc)
            return UNSURE
        except redis.RedisError:
            return UNSURE
        if not found:
            return None
        if cache_problem(found[0]) is not None:
            return UNSURE
        if len(found) < 2:
            return None  # the meme was erased: a miss
        meme_id = found[0].decode("ascii")
        meme, problem = parse_json(found[1])
        if problem or meme_problem(meme_id, meme) or not isinstance(meme, dict):
            return UNSURE  # (a record without its problem is a JSON object)
        return meme

    async def close(self) -> None:
        await self.client.aclose()
