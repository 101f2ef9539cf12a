"""Catching the projections up with the event log, and rebuilding them from it.

Every append that runs projection writes in its script also moves the checkpoint
(:mod:`memesys.storage.eventlog`), so in service the projections are never behind. They fall
behind when they are lost (keys deleted, a Redis restored without them, a new store on an old
log): the checkpoint goes with them, and appends never bring it back. :class:`Projector` then
replays, one bounded step at a time: the snapshot's pointers (:mod:`memesys.storage.snapshots`)
if there is a snapshot, then the log after its position, events of the types that project only.
It ends with one script that sets the checkpoint where it stopped, unless an append projected
after it meanwhile (then it reads on).

Why the result is the log's, though appends and erasures go on meanwhile:

* appends project themselves and are replayed again, in order, later; every key's last write is
  the log's last event for it;
* an event whose projection opens personal fields is written by a script that first checks its
  entity's key still exists: an erasure deletes the key in the transaction that deletes the
  projection, so a replay that opened the record before the erasure cannot write it back after
  (erasures wait, besides, while the projections are behind: :func:`projections_behind`);
* one replay at a time (a lock renewed before each batch): two replays could leave an older state
  behind a newer one, if the later one stopped midway.

:func:`rebuild` replays from the snapshot whatever the checkpoint says (``memesys-admin
replay``), deleting the checkpoint first so that a rebuild cut short is finished by the
projector actor (:mod:`memesys.tree.projector`), which steps a catch-up whenever the checkpoint
is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from memesys.storage.errors import StoreError
from memesys.storage.eventlog import (
    LATER,
    WRITES,
    EventLog,
    Place,
    Recorded,
    checkpoint_key,
    flattened,
)
from memesys.storage.locks import Lock
from memesys.storage.projections import PROJECTED, Keys, writes
from memesys.storage.sealing import Sealer, Shredded
from memesys.storage.snapshots import Pointer, Snapshot

log = logging.getLogger("memesys.storage.projector")

LOCK_MS = 10_000  # a replay that died holding the lock holds it no longer than this
WAIT_S = 0.05  # a rebuild's wait for another replay to end, between tries

# KEYS: the log's last projecting append, the checkpoint; ARGV: where the replay stopped
_FINISH = (
    LATER
    + """
local tail = redis.call('GET', KEYS[1]) or '0-0'
if later(tail, ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: the entity's sealing key ("" when the event opens nothing); ARGV: the writes
# (eventlog.flattened). Nothing is written once the key is gone (the entity was erased).
_GUARDED = (
    WRITES
    + """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
run_writes(1)
return 1
"""
)


def projections_behind(client: redis.Redis, prefix: str) -> bool:
    """The projections do not hold the event log: their checkpoint is missing (lost with them,
    or a replay that set it never ended)."""
    return client.get(checkpoint_key(prefix)) is None


@dataclass(frozen=True)
class Rebuilt:
    """A replay's counts: the events it read (of the types that project: through the
    snapshot's pointers, ``from_snapshot`` of them, and from the log after it), those it
    projected, those of erased entities it skipped (their sealed fields no longer open, or
    their key went while it replayed), those it could not read (gone or corrupt: a WARNING
    each), and its time."""

    events: int
    projected: int
    shredded: int
    seconds: float
    from_snapshot: int = 0
    skipped: int = 0


class Projector:
    """One catch-up of the projections under ``prefix``, stepped until :attr:`done`."""

    def __init__(
        self, client: redis.Redis, prefix: str, batch: int = 500, fresh: bool = False
    ) -> None:
        """``fresh``: replay from the snapshot (or the log's start) even where a checkpoint
        says the projections hold the log."""
        self._r, self.prefix = client, prefix
        self.log, self.keys = EventLog(client, prefix), Keys(prefix)
        self.sealer, self.snapshot = Sealer(client, prefix), Snapshot(client, prefix)
        self.batch = batch
        self._finish, self._guarded = Script(client, _FINISH), Script(client, _GUARDED)
        self.lock = Lock(client, f"{prefix}:projections:replaying", LOCK_MS)
        self._fresh = fresh
        self._position: str | None = None  # where the log's part starts; None: not chosen
        self._cursor: int | None = None  # the snapshot's scan; None: not reading it
        self._caches: list[Pointer] = []  # the snapshot's cache entries, projected last
        self.done = False
        self.events = self.projected = self.shredded = self.from_snapshot = self.skipped = 0
        self._began = time.perf_counter()

    def step(self, budget_s: float | None = None) -> bool:
        """Replay a batch at least, and on for about ``budget_s`` (None: to the end); True once
        caught up. Nothing while another replay holds the lock (False); the lock is renewed
        before each batch, so a replay of any length keeps it."""
        until = None if budget_s is None else time.monotonic() + budget_s
        while not self.done:
            if not self.lock.hold():
                return False
            if self._position is None:
                self._start()
            if self._cursor is not None:
                self._snapshot_page()
            else:
                self._log_batch()
            if until is not None and time.monotonic() >= until:
                break
        if self.done:
            self.lock.release()
        return self.done

    def rebuilt(self) -> Rebuilt:
        return Rebuilt(
            self.events,
            self.projected,
            self.shredded,
            time.perf_counter() - self._began,
            self.from_snapshot,
            self.skipped,
        )

    def finish(self, position: str) -> bool:
        """Set the checkpoint to ``position``, the replay having read the log up to it, unless
        an append projected after it meanwhile (then False: read on)."""
        return bool(self._finish(keys=[self.log.projected, self.log.checkpoint], args=[position]))

    def _start(self) -> None:
        checkpoint = None if self._fresh else cast(bytes | None, self._r.get(self.log.checkpoint))
        if checkpoint is not None:
            self._position = checkpoint.decode()
            return
        self._position = self.snapshot.position() or "0-0"
        self._cursor = 0 if self._position != "0-0" else None

    def _snapshot_page(self) -> None:
        """One page of the snapshot's pointers; its cache entries wait for the last page and
        go in the log's order (a meme's several entries leave its ``cachedby`` as the log
        does), the rest in any (each is the only write of its keys)."""
        now = time.time()
        cursor, pointers = self.snapshot.scan(cast(int, self._cursor), self.batch)
        self._cursor = cursor or None
        live = [p for p in pointers if not p.expired(now)]
        self._caches += [p for p in live if p.cache]
        places = [Place(p.entity, p.seq, p.sid) for p in live if not p.cache]
        if self._cursor is None:
            self._caches.sort(key=lambda p: p.order)
            places += [Place(p.entity, p.seq, p.sid) for p in self._caches]
            self._caches = []
        self.from_snapshot += len(places)
        self._project(places)

    def _log_batch(self) -> None:
        position = cast(str, self._position)
        found = self.log.places(position, self.batch)
        if not found:
            self.done = self.finish(position)
            return
        self._project([p for p in found if p.type in PROJECTED])
        self._position = found[-1].sid

    def _project(self, places: list[Place]) -> None:
        recorded = self.log.read(places)
        self.events += len(places)
        self.skipped += len(places) - len(recorded)
        pipe = self._r.pipeline(transaction=False)
        guarded = []
        for one in recorded:
            event = one.event
            opened: list[bool] = []
            try:
                ops = writes(self.keys, event, self._opener(one, opened))
            except Shredded:
                self.shredded += 1
                continue
            except (StoreError, ValueError, KeyError, TypeError) as exc:
                # a corrupt event: its projection stays as it was; the replay goes on
                log.warning("replay: event %s of %s skipped: %s", one.id, event.entity, exc)
                self.skipped += 1
                continue
            key = self.sealer.key_name(event.entity) if opened else ""
            self._guarded(keys=[key], args=flattened(ops), client=pipe)
            guarded.append(bool(ops))
        for wrote, ran in zip(guarded, pipe.execute()):
            if not ran:
                self.shredded += 1  # its key went after it was opened: erased meanwhile
            elif wrote:
                self.projected += 1

    def _opener(self, one: Recorded, opened: list[bool]) -> Callable[[], dict[str, Any]]:
        """What opens ``one``'s sealed fields, noting in ``opened`` that it was called."""

        def personal() -> dict[str, Any]:
            opened.append(True)
            return self.sealer.open(one.event.entity, one.event.sealed)

        return personal


def rebuild(client: redis.Redis, prefix: str, batch: int = 500) -> Rebuilt:
    """Replay the log under ``prefix`` into the projections from the snapshot (or the log's
    start) to the end, whatever the checkpoint says, and set the checkpoint. The checkpoint is
    deleted first: a rebuild cut short is finished by the daemon's projector. Waits while
    another replay runs. Idempotent: projections that exist are overwritten with the same
    values."""
    client.delete(checkpoint_key(prefix))
    projector = Projector(client, prefix, batch, fresh=True)
    while not projector.step():
        time.sleep(WAIT_S)
    return projector.rebuilt()
