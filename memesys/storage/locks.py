"""A lock in Redis for work that several processes may start but one must do at a time (a
replay of the projections, a fold of the snapshot): held by a random token, kept by renewing
its time to live while the work goes on, released only by its holder. A holder that died
holds it no longer than ``ttl_ms``; work that must not outlive its lock checks :attr:`token`
in the script that writes its result."""

from __future__ import annotations

import os

import redis
from redis.commands.core import Script

# KEYS: the lock; ARGV: the holder's token, its time to live (ms). Take it, or keep it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the lock; ARGV: the holder's token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class Lock:
    def __init__(self, client: redis.Redis, key: str, ttl_ms: int) -> None:
        self.key, self.ttl_ms = key, ttl_ms
        self.token = os.urandom(8).hex()
        self._hold, self._release = Script(client, _HOLD), Script(client, _RELEASE)

    def hold(self) -> bool:
        """Take the lock, or renew it if this holder has it: False while another holds it."""
        return bool(self._hold(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])
