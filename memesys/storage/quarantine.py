"""Poison data is quarantined, never fatal.

A record that does not parse or validate (a meme record, a PNG, a cache entry, a task record)
is *moved aside*, not deleted and not served: in one atomic script its key is renamed to
``{p}:quarantine:{kind}:{id}`` (kept ``ttl_s`` seconds for a person to look at, whatever its
type), an entry ``{"kind", "id", "key", "moved_to", "reason", "at"}`` (no content) is pushed
on the list ``{p}:quarantine`` (the newest ``LOG_LENGTH`` kept), the count of that kind is
incremented in the hash ``{p}:quarantine:counts`` (the gateway's metrics read it), and the
record's index entry is dropped (a meme leaves the listing, a task the open set). A task record
is replaced by a ``failed`` task in the same script, so its client reads a clear error. A PNG kept
as a file (:mod:`memesys.storage.images`) is renamed by its owner into the image directory's
``quarantine/`` and :meth:`Quarantine.moved` enters, counts and logs it the same way.

The script moves the record only if it is still the corrupt value that was read (same SHA-1,
or same wrong type): a record rewritten meanwhile, or already moved by another process, is left
alone, so each record is moved, logged and counted once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, cast

import redis
from redis.commands.core import Script

log = logging.getLogger("memesys.storage.quarantine")

LOG_LENGTH = 1000
KINDS = ("meme", "png", "cache", "task")

_MOVE = """
local t = redis.call('type', KEYS[1]).ok
if t == 'none' then return 0 end
local fp
if t == 'string' then fp = 'string:' .. redis.sha1hex(redis.call('get', KEYS[1]))
else fp = 'type:' .. t end
if fp ~= ARGV[1] then return 0 end
local pttl = redis.call('pttl', KEYS[1])
redis.call('rename', KEYS[1], KEYS[2])
redis.call('expire', KEYS[2], tonumber(ARGV[5]))
redis.call('lpush', KEYS[3], ARGV[2])
redis.call('ltrim', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('hincrby', KEYS[4], ARGV[3], 1)
if ARGV[6] ~= '' then redis.call(ARGV[6], KEYS[5], ARGV[7]) end
if ARGV[8] ~= '' then
  if pttl > 0 then redis.call('set', KEYS[1], ARGV[8], 'px', pttl)
  elseif tonumber(ARGV[9]) > 0 then redis.call('set', KEYS[1], ARGV[8], 'ex', tonumber(ARGV[9]))
  else redis.call('set', KEYS[1], ARGV[8]) end
end
return 1
"""


def fingerprint(raw: bytes | None, wrong_type: str | None = None) -> str:
    """What the script compares: the SHA-1 of a string value, or the name of a wrong type."""
    if wrong_type is not None:
        return f"type:{wrong_type}"
    return "string:" + hashlib.sha1(raw or b"").hexdigest()


def is_wrong_type(exc: redis.RedisError) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _entry(kind: str, record_id: str, key: str, moved_to: str, reason: str) -> str:
    """A quarantine list entry: where the record was and went, and why; never its content."""
    return json.dumps(
        {
            "kind": kind,
            "id": record_id,
            "key": key,
            "moved_to": moved_to,
            "reason": reason,
            "at": time.time(),
        },
        separators=(",", ":"),
    )


def _logged(kind: str, record_id: str, reason: str, moved_to: str) -> None:
    log.warning("quarantined the %s record %s: %s; moved to %s", kind, record_id, reason, moved_to)


class Quarantine:
    """Moves poison records aside under ``prefix``; see the module docstring."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self._r = client
        self._p = prefix
        self.ttl_s = ttl_s
        self._log = f"{prefix}:quarantine"
        self._counts = f"{prefix}:quarantine:counts"
        self._move: Script | None = None  # registered on first use

    def key_of(self, kind: str, record_id: str) -> str:
        """Where a quarantined record of ``kind`` with ``record_id`` is kept."""
        return f"{self._p}:quarantine:{kind}:{record_id}"

    def move(
        self,
        kind: str,
        record_id: str,
        key: str,
        print_: str,
        reason: str,
        index: tuple[str, str] | None = None,
        replacement: bytes | None = None,
        replacement_ttl_s: int = 0,
    ) -> bool:
        """Move ``key`` aside if it still has fingerprint ``print_``; True if this call moved
        it (and logged it). ``index``: ``(command, key)`` that drops ``record_id`` from its
        index (``("zrem", memes)``, ``("srem", open tasks)``); ``replacement``: written in its
        place (keeping its TTL). Raises redis errors (the caller's guard handles them)."""
        moved_to = self.key_of(kind, record_id)
        entry = _entry(kind, record_id, key, moved_to, reason)
        command, index_key = index or ("", key)
        if self._move is None:
            self._move = self._r.register_script(_MOVE)
        moved = self._move(
            keys=[key, moved_to, self._log, self._counts, index_key],
            args=[
                print_,
                entry,
                kind,
                LOG_LENGTH,
                self.ttl_s,
                command,
                record_id,
                replacement or b"",
                replacement_ttl_s,
            ],
            client=self._r,
        )
        if moved:
            _logged(kind, record_id, reason, moved_to)
        return bool(moved)

    def moved(self, kind: str, record_id: str, path: str, moved_to: str, reason: str) -> None:
        """A record kept outside Redis (a PNG file) that its owner has just moved aside from
        ``path`` to ``moved_to``: entered, counted and logged as :meth:`move` does. Raises redis
        errors."""
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(self._log, _entry(kind, record_id, path, moved_to, reason))
        pipe.ltrim(self._log, 0, LOG_LENGTH - 1)
        pipe.hincrby(self._counts, kind, 1)
        pipe.execute()
        _logged(kind, record_id, reason, moved_to)

    def counts(self) -> dict[str, int]:
        """Records quarantined so far, by kind (durable: kept in Redis)."""
        raw = cast(dict[bytes, bytes], self._r.hgetall(self._counts))
        return {k.decode(errors="replace"): int(v) for k, v in raw.items()}

    def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest quarantine entries, newest first."""
        out: list[dict[str, Any]] = []
        for raw in self._r.lrange(self._log, 0, max(0, limit - 1)):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out

    def forget(self, kind: str, record_id: str) -> int:
        """Delete a quarantined copy (erasure: a copy may hold the erased content)."""
        return int(self._r.delete(self.key_of(kind, record_id)))
