"""The event log's snapshot: for each projection a replay would write, a pointer to the one
event that writes it last (a meme's ``completed``, a cache entry's latest ``cached``, a task's
latest event), as of a position in the global stream.

A replay that starts from the snapshot (:mod:`memesys.storage.projector`) reads one event per
pointer, then the log after the position, instead of every event since the beginning: the
pipeline's progress events, superseded task states and everything erased or expired are
skipped. Pointers hold ids and stream ids, nothing personal and no data: the events are read,
and opened with their entity's key, at replay, so an erasure owes the snapshot nothing (the
pointer of an erased meme opens nothing, and the next fold drops it).

The snapshot is folded forward in place, one bounded step at a time (:func:`fold`): a step
applies the log's entries after the position to the pointers and moves the position, in one
transaction. The pointers are always at or past the position, and a replay from the snapshot
replays the log after the position again: projecting an event twice is idempotent and the last
event in the log's order wins, so it ends where a replay of the whole log ends.

Keys, in the log's namespace (a rebuild keeps them):

* ``{p}:events:snapshot``           ``position`` (a global stream id), ``folded`` (global
                                    entries folded so far), ``cursor`` (of the expiry sweep)
* ``{p}:events:snapshot:pointers``  field: ``meme:<id>``, ``task:<id>`` or ``cache:<digest>``;
                                    value: ``<stream id> <entity> <version> <expires_at, 0: never>``
* ``{p}:events:snapshot:lock``      one folder at a time (several daemons may share a Redis)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

import redis
from redis.commands.core import Script

from memesys.domain.events import CACHED, COMPLETED, ERASED, EXPIRED
from memesys.storage.eventlog import EventLog, Place
from memesys.storage.locks import Lock
from memesys.storage.projections import PROJECTED

LOCK_MS = 10_000  # a folder that died holding the lock holds it no longer than this
SWEEP_PAGE = 500  # pointers looked at for expiry by each fold

log = logging.getLogger("memesys.storage.snapshots")

# KEYS: the lock, the pointers, the position's hash; ARGV: the folder's token, the new position,
# the entries folded so far, then pairs of field and pointer ("" drops the field). Written only
# by the lock's holder, so two folders can never move the position backwards.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[3], 'position', ARGV[2], 'folded', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Pointer:
    """Where the event a projection comes from is, until when that projection lives, and
    whether it is a cache entry's."""

    sid: str
    entity: str
    seq: int
    expires_at: float  # 0: never
    cache: bool = False

    @classmethod
    def parse(cls, name: bytes, raw: bytes) -> Pointer:
        sid, entity, seq, expires_at = raw.decode().split(" ")
        return cls(sid, entity, int(seq), float(expires_at), name.startswith(b"cache:"))

    def packed(self) -> str:
        return f"{self.sid} {self.entity} {self.seq} {self.expires_at!r}"

    def expired(self, now: float) -> bool:
        return 0 < self.expires_at <= now

    @property
    def order(self) -> tuple[int, int]:
        """Its place in the log's order."""
        ms, seq = self.sid.split("-")
        return int(ms), int(seq)


class Snapshot:
    """The snapshot under ``prefix``: its position, its pointers, and folding it forward."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._r = client
        self.log = EventLog(client, prefix)
        self.meta = f"{prefix}:events:snapshot"
        self.pointers = f"{prefix}:events:snapshot:pointers"
        self.lock = f"{prefix}:events:snapshot:lock"
        self._write = Script(client, _WRITE)

    def position(self) -> str | None:
        """The global stream id the pointers are at or past; None when there is no snapshot."""
        raw = cast(bytes | None, self._r.hget(self.meta, "position"))
        return raw.decode() if raw else None

    def due(self, every: int) -> bool:
        """At least ``every`` global entries are not folded yet."""
        folded = int(cast(bytes | None, self._r.hget(self.meta, "folded")) or 0)
        return self._r.xlen(self.log.all) - folded >= every

    def scan(self, cursor: int, count: int) -> tuple[int, list[Pointer]]:
        """One page of the pointers (``cursor`` 0 starts; a next cursor of 0 ends); a corrupt
        one is skipped (a WARNING)."""
        cursor, page = self._page(cursor, count)
        for name, pointer in page:
            if pointer is None:
                log.warning("snapshot: pointer %r unreadable: skipped", name)
        return cursor, [pointer for _, pointer in page if pointer is not None]

    def _page(self, cursor: int, count: int) -> tuple[int, list[tuple[bytes, Pointer | None]]]:
        """One page of the pointers by name (None: one that cannot be read)."""
        cursor, page = cast(
            tuple[int, dict[bytes, bytes]], self._r.hscan(self.pointers, cursor, count=count)
        )
        pointers: list[tuple[bytes, Pointer | None]] = []
        for name, raw in page.items():
            try:
                pointers.append((name, Pointer.parse(name, raw)))
            except (ValueError, UnicodeDecodeError):
                pointers.append((name, None))
        return cursor, pointers

    def fold(self, budget_s: float, batch: int = 500) -> bool:
        """Fold the log's entries after the position into the pointers, ``batch`` at a time,
        for about ``budget_s``, then drop a page of expired pointers; True once at the log's
        end (False also while another folder holds the lock)."""
        lock = Lock(self._r, self.lock, LOCK_MS)
        if not lock.hold():
            return False
        try:
            return self._fold(lock.token, budget_s, batch)
        finally:
            lock.release()

    def _fold(self, token: str, budget_s: float, batch: int) -> bool:
        meta = cast(dict[bytes, bytes], self._r.hgetall(self.meta))
        position = meta.get(b"position", b"0-0").decode()
        folded = int(meta.get(b"folded", 0))
        until = time.monotonic() + budget_s
        while True:
            found = self.log.places(position, batch)
            if not found:
                break
            position, folded = found[-1].sid, folded + len(found)
            args: list[str | int] = [token, position, folded]
            for name, pointer in self._changes(found).items():
                args += [name, "" if pointer is None else pointer.packed()]
            if not self._write(keys=[self.lock, self.pointers, self.meta], args=args):
                return False  # the lock expired: another folder may hold it
            if len(found) < batch or time.monotonic() >= until:
                break
        self._sweep(int(meta.get(b"cursor", 0)))
        return len(found) < batch

    def _changes(self, found: list[Place]) -> dict[str, Pointer | None]:
        """What the events at ``found`` (in the log's order) do to the pointers: set or drop
        (None), the last change of each pointer winning, as the projections' last write wins.
        A ``completed`` needs nothing but its place; the other events are read for their data
        (one that cannot be read changes nothing: a WARNING)."""
        places = [p for p in found if p.type in PROJECTED]
        read = {r.id: r for r in self.log.read(p for p in places if p.type != COMPLETED)}
        changes: dict[str, Pointer | None] = {}
        for place in places:
            if place.type == COMPLETED:  # a meme's record lives until it is erased
                changes[place.entity] = Pointer(place.sid, place.entity, place.seq, 0.0)
                continue
            if place.sid not in read:  # its entity's stream expired (a task's), or corrupt
                continue
            data = read[place.sid].event.data
            try:
                if place.type in (ERASED, EXPIRED):
                    changes[place.entity] = None
                    for digest in data.get("caches", ()):
                        changes[f"cache:{digest}"] = None
                else:  # a cache entry, a task's latest event: until their expires_at
                    name = f"cache:{data['cache']}" if place.type == CACHED else place.entity
                    expires_at = float(data["expires_at"])
                    changes[name] = Pointer(place.sid, place.entity, place.seq, expires_at)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("snapshot: event %s of %s skipped (%r)", place.sid, place.entity, exc)
        return changes

    def _sweep(self, cursor: int) -> None:
        """Drop one page of pointers whose projections have expired (tasks, cache entries),
        and any that cannot be read."""
        now = time.time()
        cursor, page = self._page(cursor, SWEEP_PAGE)
        gone = [name for name, pointer in page if pointer is None or pointer.expired(now)]
        pipe = self._r.pipeline(transaction=False)
        if gone:
            pipe.hdel(self.pointers, *gone)
        pipe.hset(self.meta, "cursor", cursor)
        pipe.execute()
