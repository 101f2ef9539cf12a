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

import os
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from memesys.domain.events import CACHED, COMPLETED, ERASED, EXPIRED
from memesys.storage.eventlog import EventLog
from memesys.storage.projections import PROJECTED

LOCK_MS = 10_000  # a folder that died holding the lock holds it no longer than this
SWEEP_PAGE = 500  # pointers looked at for expiry by each fold


@dataclass(frozen=True)
class Pointer:
    """Where the event a projection comes from is, and until when that projection lives."""

    sid: str
    entity: str
    seq: int
    expires_at: float  # 0: never

    @classmethod
    def parse(cls, raw: bytes) -> Pointer:
        sid, entity, seq, expires_at = raw.decode().split(" ")
        return cls(sid, entity, int(seq), float(expires_at))

    def packed(self) -> str:
        return f"{self.sid} {self.entity} {self.seq} {self.expires_at!r}"

    def expired(self, now: float) -> bool:
        return 0 < self.expires_at <= now


@dataclass(frozen=True)
class Folded:
    """One :func:`fold`: the global entries it read, and whether it reached the log's end
    (False also when another folder held the lock)."""

    entries: int
    done: bool


class Snapshot:
    """The snapshot under ``prefix``: its position, its pointers, and folding it forward."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._r = client
        self.log = EventLog(client, prefix)
        self.meta = f"{prefix}:events:snapshot"
        self.pointers = f"{prefix}:events:snapshot:pointers"
        self.lock = f"{prefix}:events:snapshot:lock"

    def position(self) -> str | None:
        """The global stream id the pointers are at or past; None when there is no snapshot."""
        raw = cast(bytes | None, self._r.hget(self.meta, "position"))
        return raw.decode() if raw else None

    def due(self, every: int) -> bool:
        """At least ``every`` global entries are not folded yet."""
        folded = int(cast(bytes | None, self._r.hget(self.meta, "folded")) or 0)
        return self._r.xlen(self.log.all) - folded >= every

    def scan(self, cursor: int, count: int) -> tuple[int, list[Pointer]]:
        """One page of the pointers (``cursor`` 0 starts; a next cursor of 0 ends)."""
        cursor, page = cast(
            tuple[int, dict[bytes, bytes]], self._r.hscan(self.pointers, cursor, count=count)
        )
        return cursor, [Pointer.parse(raw) for raw in page.values()]

    def fold(self, budget_s: float, batch: int = 500) -> Folded:
        """Fold the log's entries after the position into the pointers, ``batch`` at a time,
        for about ``budget_s``; then drop a page of expired pointers."""
        token = os.urandom(8).hex()
        if not self._r.set(self.lock, token, nx=True, px=LOCK_MS):
            return Folded(0, False)
        try:
            return self._fold(budget_s, batch)
        finally:
            if self._r.get(self.lock) == token.encode():
                self._r.delete(self.lock)

    def _fold(self, budget_s: float, batch: int) -> Folded:
        meta = cast(dict[bytes, bytes], self._r.hgetall(self.meta))
        position = meta.get(b"position", b"0-0").decode()
        folded = int(meta.get(b"folded", 0))
        until = time.monotonic() + budget_s
        read = 0
        while True:
            start = "-" if position == "0-0" else f"({position}"
            entries = cast(list[Any], self._r.xrange(self.log.all, start, "+", count=batch))
            if not entries:
                break
            changes = self._changes(entries)
            position = entries[-1][0].decode()
            folded += len(entries)
            read += len(entries)
            pipe = self._r.pipeline(transaction=True)
            for name, pointer in changes.items():
                if pointer is None:
                    pipe.hdel(self.pointers, name)
                else:
                    pipe.hset(self.pointers, name, pointer.packed())
            pipe.hset(self.meta, mapping={"position": position, "folded": folded})
            pipe.execute()
            if len(entries) < batch or time.monotonic() >= until:
                break
        done = len(entries) < batch if entries else True
        self._sweep(int(meta.get(b"cursor", 0)))
        return Folded(read, done)

    def _changes(self, entries: list[Any]) -> dict[str, Pointer | None]:
        """What ``entries`` (global entries, in order) do to the pointers: set or drop (None),
        the last change of each pointer winning, as the projections' last write wins. A
        ``completed`` needs nothing but its place; the other events are read for their data."""
        places = [
            (where[b"entity"].decode(), int(where[b"seq"]), sid.decode())
            for sid, where in entries
            if where[b"type"].decode() in PROJECTED
        ]
        kinds = {sid.decode(): where[b"type"].decode() for sid, where in entries}
        read = {r.id: r for r in self.log.read(p for p in places if kinds[p[2]] != COMPLETED)}
        changes: dict[str, Pointer | None] = {}
        for entity, seq, sid in places:
            if kinds[sid] == COMPLETED:  # a meme's record lives until it is erased
                changes[entity] = Pointer(sid, entity, seq, 0.0)
                continue
            if sid not in read:  # its entity's stream expired (a task's) or was deleted
                continue
            data = read[sid].event.data
            if kinds[sid] in (ERASED, EXPIRED):
                changes[entity] = None
                for digest in data.get("caches", ()):
                    changes[f"cache:{digest}"] = None
            else:  # a cache entry, a task's latest event: until their expires_at
                name = f"cache:{data['cache']}" if kinds[sid] == CACHED else entity
                changes[name] = Pointer(sid, entity, seq, float(data["expires_at"]))
        return changes

    def _sweep(self, cursor: int) -> None:
        """Drop one page of pointers whose projections have expired (tasks, cache entries)."""
        now = time.time()
        cursor, page = cast(
            tuple[int, dict[bytes, bytes]],
            self._r.hscan(self.pointers, cursor, count=SWEEP_PAGE),
        )
        gone = [name for name, raw in page.items() if Pointer.parse(raw).expired(now)]
        pipe = self._r.pipeline(transaction=False)
        if gone:
            pipe.hdel(self.pointers, *gone)
        pipe.hset(self.meta, "cursor", cursor)
        pipe.execute()
