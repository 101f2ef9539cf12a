"""Catching the projections up with the event log, and rebuilding them from it.

Every append that projects writes its projection in the same script and moves the checkpoint
(:mod:`memesys.storage.eventlog`), so in service the projections are never behind. They fall
behind when they are lost (keys deleted, a Redis restored without them, a new store on an old
log): the checkpoint goes with them, and the log goes on without moving it. :class:`Projector`
then replays, one bounded step at a time: from the snapshot's pointers
(:mod:`memesys.storage.snapshots`) if there is a snapshot, then the log after its position,
events of the types that project only. It ends with one script that sets the checkpoint to
where it stopped if no append projected after it (or reads on). Appends that land meanwhile are
projected by their own script and again, in order, by the replay; the last write of each key
is the log's last event for it either way.

:func:`rebuild` runs it to the end ignoring the checkpoint (``memesys-admin replay``); the
projector actor (:mod:`memesys.tree.projector`) steps it whenever the checkpoint is missing.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from memesys.storage.errors import StoreError
from memesys.storage.eventlog import LATER, EventLog, Recorded
from memesys.storage.projections import PROJECTED, Keys, writes
from memesys.storage.sealing import Sealer, Shredded
from memesys.storage.snapshots import Snapshot

log = logging.getLogger("memesys.storage.projector")

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


@dataclass(frozen=True)
class Rebuilt:
    """A replay's counts: the events it read (of the types that project: through the
    snapshot's pointers, ``from_snapshot`` of them, and from the log after it), those it
    projected, those of erased entities it skipped (their sealed fields no longer open), those
    it could not read (corrupt: a WARNING each), and its time."""

    events: int
    projected: int
    shredded: int
    seconds: float
    from_snapshot: int = 0
    unreadable: int = 0


class Projector:
    """One catch-up of the projections under ``prefix``, stepped until :attr:`done`."""

    def __init__(
        self, client: redis.Redis, prefix: str, batch: int = 500, fresh: bool = False
    ) -> None:
        """``fresh``: replay from the snapshot (or the log's start) even where a checkpoint
        says the projections hold the log."""
        self._r = client
        self.log, self.keys = EventLog(client, prefix), Keys(prefix)
        self.sealer, self.snapshot = Sealer(client, prefix), Snapshot(client, prefix)
        self.batch = batch
        self._finish = Script(client, _FINISH)
        self._fresh = fresh
        self._position: str | None = None  # where the log's part starts; None: not chosen
        self._cursor: int | None = None  # the snapshot's scan; None: not reading it
        self.done = False
        self.events = self.projected = self.shredded = self.from_snapshot = self.unreadable = 0
        self._began = time.perf_counter()

    def behind(self) -> bool:
        """The projections do not hold the log (their checkpoint is missing)."""
        return self._r.get(self.log.checkpoint) is None

    def step(self, budget_s: float | None = None) -> bool:
        """Replay a batch at least, and on for about ``budget_s`` (None: to the end); True once
        caught up."""
        until = None if budget_s is None else time.monotonic() + budget_s
        if self._position is None:
            self._start()
        while not self.done:
            if self._cursor is not None:
                self._snapshot_page()
            else:
                self._log_batch()
            if until is not None and time.monotonic() >= until:
                break
        return self.done

    def rebuilt(self) -> Rebuilt:
        return Rebuilt(
            self.events,
            self.projected,
            self.shredded,
            time.perf_counter() - self._began,
            self.from_snapshot,
            self.unreadable,
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
        now = time.time()
        cursor, pointers = self.snapshot.scan(cast(int, self._cursor), self.batch)
        self._cursor = cursor or None
        live = [p for p in pointers if not p.expired(now)]
        read = self.log.read((p.entity, p.seq, p.sid) for p in live)
        self.from_snapshot += len(read)
        self._project(read)

    def _log_batch(self) -> None:
        position = cast(str, self._position)
        start = "-" if position == "0-0" else f"({position}"
        entries = cast(list[Any], self._r.xrange(self.log.all, start, "+", count=self.batch))
        if not entries:
            self.done = self.finish(position)
            return
        self._project(
            self.log.read(
                (where[b"entity"].decode(), int(where[b"seq"]), sid.decode())
                for sid, where in entries
                if where[b"type"].decode() in PROJECTED
            )
        )
        self._position = entries[-1][0].decode()

    def _project(self, recorded: list[Recorded]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for one in recorded:
            self.events += 1
            event = one.event
            personal = functools.partial(self.sealer.open, event.entity, event.sealed)
            try:
                ops = writes(self.keys, event, personal)
            except Shredded:
                self.shredded += 1
                continue
            except (StoreError, ValueError, KeyError, TypeError) as exc:
                # a corrupt event: its projection stays as it was; the replay goes on
                log.warning("replay: event %s of %s skipped: %s", one.id, event.entity, exc)
                self.unreadable += 1
                continue
            for op in ops:
                pipe.execute_command(*op)  # type: ignore[no-untyped-call]  # untyped in redis-py
            self.projected += 1 if ops else 0
        pipe.execute()


def rebuild(client: redis.Redis, prefix: str, batch: int = 500) -> Rebuilt:
    """Replay the log under ``prefix`` into the projections from the snapshot (or the log's
    start) to the end, whatever the checkpoint says, and set the checkpoint. Idempotent:
    projections that exist are overwritten with the same values."""
    projector = Projector(client, prefix, batch, fresh=True)
    projector.step()
    return projector.rebuilt()
