"""The event log: every meme's life as events in Redis Streams, the source the projections
(the meme by id, memes by time, cache entries) are rebuilt from.

Keys, all under ``{p}:events:`` (the one namespace a rebuild keeps):

* ``{p}:events:{entity}``   one stream per entity (``meme:<id>``); its length is its version
* ``{p}:events:all``        every event's entity, version and type, in append order, under the
                            same stream id as the event in its entity's stream (the replay's
                            order; a replay reads only the events of the types it projects)
* ``{p}:events:key:{entity}`` the entity's sealing key (:mod:`memesys.storage.sealing`):
                            beside the log, not in it, so erasure can destroy it
* ``{p}:events:projected``  the stream id of the last append whose script ran projection
                            writes
* ``{p}:events:snapshot``, ``{p}:events:snapshot:pointers`` the snapshot
                            (:mod:`memesys.storage.snapshots`)

An entry's fields: ``type``, ``v`` (schema version), ``trace`` (the meme's trace id; empty:
that of its stream's first event), ``corr`` (correlation: the request or task id; empty: that of
its stream's first event, whose own empty ``corr`` is its trace id), ``cause`` (what caused
it; empty: the event before it in its stream), ``data`` (compact JSON, never personal) and
``sealed``
(the personal fields, encrypted with the entity's key; empty when there are none) and, while
tracing is on, ``traceparent`` (the W3C trace context of the span that recorded it: the stage,
the save, the request). Its time is
its stream id's (Redis's clock, in ms). The empty defaults keep a meme's dozen events small in
Redis's memory (the log's share of a meme's bytes, ``bench.storage``). The global
stream's entries are ``entity``, ``seq`` (the version the append made) and ``type``.

:data:`APPEND` appends, in one script, to the entity's stream and to the global one if the
entity is at the version the writer expects (optimistic concurrency: a writer that lost a race
gets :class:`VersionConflict` and nothing is written), then runs the projection's writes in the
same script, so a reader never sees an event without its projection or the reverse. Redis
keeps a script's writes up to one that fails, so a projection write that would fail on its
key's type (a corrupt key) is found before anything is written: :class:`ProjectionBlocked`,
nothing appended. An append
that writes projections also moves ``{p}:events:projected`` to its id, and moves the
projections' checkpoint (``{p}:projections:checkpoint``, outside the log: it goes when they go)
with it if the checkpoint had reached the previous one; a checkpoint that is missing stays
missing until :mod:`memesys.storage.projector` has caught the projections up with the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.commands.core import Script

from memesys.domain.events import SCHEMA_VERSION
from memesys.storage.errors import StoreError
from memesys.telemetry.tracing import current_traceparent

log = logging.getLogger("memesys.storage.eventlog")

ANY_VERSION = -1
"""Append whatever the entity's version (an event that cannot conflict, e.g. a cache entry)."""

# The writes a projection may run inside the append script; nothing else reaches Redis that way.
PROJECTION_COMMANDS = frozenset({"SET", "DEL", "ZADD", "ZREM", "SADD", "SREM", "EXPIRE", "PEXPIRE"})

# Lua: a stream id's two parts ("<ms>-<seq>", both below 2^53), or nil for anything else; is
# stream id a after b (a value that is no id is after nothing, and everything is after it)
LATER = """
local function parts(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end
local function later(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  if not am then return false end
  if not bm then return true end
  return am > bm or (am == bm and as > bs)
end
"""

# Lua: the projection writes in ARGV from index i on, each its length then its words
# (:func:`flattened`); run them, or find the first that would fail on its key's type (a sorted
# set or set command on a key of another type: Redis would run the writes before it and stop
# there) as "<key> holds a <type>, not a <type>" (nil when every write can run)
WRITES = """
local function writes_from(i)
  local cmds = {}
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    local cmd = {}
    for j = 1, n do cmd[j] = ARGV[i + j] end
    cmds[#cmds + 1] = cmd
    i = i + n + 1
  end
  return cmds
end
local function run_writes(i)
  for _, cmd in ipairs(writes_from(i)) do redis.call(unpack(cmd)) end
end
local WANTS = {ZADD = 'zset', ZREM = 'zset', SADD = 'set', SREM = 'set'}
local function blocked(i)
  for _, cmd in ipairs(writes_from(i)) do
    local want = WANTS[string.upper(cmd[1])]
    if want then
      local kind = redis.call('TYPE', cmd[2])['ok']
      if kind ~= 'none' and kind ~= want then
        return cmd[2] .. ' holds a ' .. kind .. ', not a ' .. want
      end
    end
  end
  return nil
end
"""

_APPEND = (
    LATER
    + WRITES
    + """
local version = redis.call('XLEN', KEYS[1])
local expected = tonumber(ARGV[1])
if expected >= 0 and version ~= expected then
  return {0, version}
end
local w = 4  -- where the projection writes begin, after the events
for e = 1, tonumber(ARGV[3]) do w = w + tonumber(ARGV[w]) + 1 end
local problem = blocked(w)
if problem then return {-1, problem} end  -- nothing written: all or nothing
local i, ids = 4, {}
for e = 1, tonumber(ARGV[3]) do
  local nfields = tonumber(ARGV[i])
  local fields = {}
  for f = 1, nfields do fields[f] = ARGV[i + f] end
  i = i + nfields + 1
  version = version + 1
  -- the global stream's new id is above every id of every entity stream (each holds a
  -- subset); it holds where the event is, not the event (one copy of each event in memory)
  local id = redis.call('XADD', KEYS[2], '*', 'entity', ARGV[2], 'seq', version, 'type', fields[2])
  redis.call('XADD', KEYS[1], id, unpack(fields))
  ids[e] = id
end
if i <= #ARGV then
  -- it projects: the checkpoint follows if it had reached the last append that projected
  local last = ids[#ids]
  local tail = redis.call('GET', KEYS[3]) or '0-0'
  redis.call('SET', KEYS[3], last)
  local checkpoint = redis.call('GET', KEYS[4])
  if checkpoint and parts(checkpoint) and not later(tail, checkpoint) then
    redis.call('SET', KEYS[4], last)
  end
end
run_writes(i)
return {1, version, ids}
"""
)


def flattened(writes: Sequence[Write]) -> list[str | bytes | int | float]:
    """``writes`` as a script's arguments (:data:`WRITES`); ValueError for a command that is
    not one of :data:`PROJECTION_COMMANDS`."""
    args: list[str | bytes | int | float] = []
    for write in writes:
        if str(write[0]).upper() not in PROJECTION_COMMANDS:
            raise ValueError(f"not a projection write: {write[0]!r}")
        args += [len(write), *write]
    return args


def checkpoint_key(prefix: str) -> str:
    """The projections' checkpoint: the stream id up to which they hold every event."""
    return f"{prefix}:projections:checkpoint"


class ProjectionBlocked(StoreError):
    """A projection write of the append would fail on its key's type (a corrupt key): nothing
    was appended, rather than events whose projection stopped halfway."""

    def __init__(self, entity: str, problem: str) -> None:
        super().__init__(f"{entity}: nothing appended: the projection key {problem}")
        self.entity, self.problem = entity, problem


class VersionConflict(StoreError):
    """The entity was not at the version the writer expected: someone else appended first."""

    def __init__(self, entity: str, expected: int, actual: int) -> None:
        super().__init__(f"{entity}: expected version {expected}, found {actual}")
        self.entity, self.expected, self.actual = entity, expected, actual


PREVIOUS = ""
"""An event's cause when it is the event before it in its entity's stream."""


@dataclass(frozen=True)
class Event:
    """One event as written: ``data`` is public, ``sealed`` is the personal part already
    encrypted (bytes, or b"" when the event carries nothing personal); ``cause``: PREVIOUS, or
    what outside the stream caused it (e.g. "request"); ``traceparent``: the W3C trace context
    of the span current where it was made ("" while tracing is off)."""

    type: str
    entity: str
    data: Mapping[str, Any]
    correlation: str
    cause: str
    trace: str
    sealed: bytes = b""
    v: int = SCHEMA_VERSION
    traceparent: str = field(default_factory=current_traceparent)

    def fields(self) -> list[str | bytes]:
        return [
            "type",
            self.type,
            "v",
            str(self.v),
            "trace",
            self.trace,
            "corr",
            "" if self.correlation == self.trace else self.correlation,
            "cause",
            self.cause,
            "data",
            json.dumps(self.data, separators=(",", ":"), sort_keys=True),
            "sealed",
            self.sealed,
            *(("traceparent", self.traceparent) if self.traceparent else ()),
        ]


@dataclass(frozen=True)
class Place:
    """Where an event is: its entity, its version, its stream id (the same in the entity's
    stream and the global one) and its type."""

    entity: str
    seq: int
    sid: str
    type: str = ""


@dataclass(frozen=True)
class Recorded:
    """An event read back from the log, with its stream id, its entity's version and its time
    (Unix seconds, from the id); a PREVIOUS cause reads as the event before (``entity#seq``)."""

    id: str
    seq: int
    event: Event

    @property
    def at(self) -> float:
        return int(self.id.split("-", 1)[0]) / 1000


Write = Sequence[str | bytes | int | float]
"""One projection write: a command of :data:`PROJECTION_COMMANDS` and its arguments."""


class EventLog:
    """Append to and read the log under ``{prefix}:events:``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._r = client
        self.prefix = f"{prefix}:events:"
        self.all = f"{self.prefix}all"
        self.projected = f"{self.prefix}projected"
        self.checkpoint = checkpoint_key(prefix)
        self._append = Script(client, _APPEND)

    def stream(self, entity: str) -> str:
        return f"{self.prefix}{entity}"

    def append(
        self, event: Event, expected: int = ANY_VERSION, writes: Sequence[Write] = ()
    ) -> Recorded:
        """Append ``event`` if its entity is at version ``expected`` (ANY_VERSION: whatever it
        is), and run ``writes`` (the projection) in the same script; VersionConflict if not."""
        return self.append_all([event], expected, writes)[0]

    def append_all(
        self, events: Sequence[Event], expected: int = ANY_VERSION, writes: Sequence[Write] = ()
    ) -> list[Recorded]:
        """Append ``events`` (of one entity, in order) as :meth:`append` appends one: all or
        none."""
        reply = self._append(*self._call(events, expected, writes))
        return self.outcome(events, expected, reply)

    def append_in(
        self,
        pipe: redis.client.Pipeline,
        event: Event,
        expected: int = ANY_VERSION,
        writes: Sequence[Write] = (),
    ) -> None:
        """Queue the append on ``pipe`` (inside a MULTI with the writer's other commands); its
        reply goes to :meth:`outcome`."""
        keys, args = self._call([event], expected, writes)
        self._append(keys, args, client=pipe)

    def outcome(self, events: Sequence[Event], expected: int, reply: Any) -> list[Recorded]:
        """The appended events from the script's reply; VersionConflict if it was refused for
        the version, ProjectionBlocked for a projection key's type."""
        ok, version, *rest = cast(list[Any], reply)
        if ok == -1:
            raise ProjectionBlocked(events[0].entity, version.decode(errors="replace"))
        if not ok:
            raise VersionConflict(events[0].entity, expected, int(version))
        first = int(version) - len(events) + 1
        return [
            Recorded(sid.decode(), first + n, event)
            for n, (sid, event) in enumerate(zip(rest[0], events))
        ]

    def _call(
        self, events: Sequence[Event], expected: int, writes: Sequence[Write]
    ) -> tuple[list[str], list[str | bytes | int | float]]:
        entity = events[0].entity
        if any(event.entity != entity for event in events):
            raise ValueError("one append holds the events of one entity")
        args: list[str | bytes | int | float] = [expected, entity, len(events)]
        for event in events:
            fields = event.fields()
            args += [len(fields), *fields]
        args += flattened(writes)
        return [self.stream(entity), self.all, self.projected, self.checkpoint], args

    def version(self, entity: str) -> int:
        return self._r.xlen(self.stream(entity))

    def history(self, entity: str) -> list[Recorded]:
        """Every event of ``entity``, oldest first, its trace and correlation filled in."""
        entries = cast(list[Any], self._r.xrange(self.stream(entity)))
        events: list[Recorded] = []
        for n, (sid, raw) in enumerate(entries, 1):
            events.append(_recorded(entity, n, sid, raw, events[0].event if events else None))
        return events

    def places(self, after: str, batch: int) -> list[Place]:
        """Where the next ``batch`` events after global stream id ``after`` ("0-0": from the
        start) are, in append order; an entry that cannot be read is skipped (a WARNING)."""
        start = "-" if after == "0-0" else f"({after}"
        found = []
        for sid, where in cast(list[Any], self._r.xrange(self.all, start, "+", count=batch)):
            try:
                entity, seq, kind = where[b"entity"], int(where[b"seq"]), where[b"type"]
                found.append(Place(entity.decode(), seq, sid.decode(), kind.decode()))
            except (KeyError, ValueError) as exc:
                log.warning("event log: global entry %s unreadable (%r): skipped", sid, exc)
                found.append(Place("", 0, sid.decode(), ""))  # still passed: a position
        return found

    def read(self, places: Iterable[Place]) -> list[Recorded]:
        """The events at ``places``, in one round trip; a place whose entity's stream is gone
        (expired, deleted by hand) reads nothing, nor one whose entry is corrupt (a
        WARNING)."""
        wanted = [place for place in places if place.entity]
        if not wanted:
            return []
        pipe = self._r.pipeline(transaction=False)
        for place in wanted:
            pipe.xrange(self.stream(place.entity), place.sid, place.sid)
        events = []
        for place, found in zip(wanted, pipe.execute()):
            if not found:
                continue
            try:
                events.append(_recorded(place.entity, place.seq, place.sid.encode(), found[0][1]))
            except (KeyError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError too
                log.warning(
                    "event log: event %s of %s unreadable (%r): skipped",
                    place.sid,
                    place.entity,
                    exc,
                )
        return events


def _recorded(
    entity: str, seq: int, sid: bytes, raw: Mapping[bytes, bytes], first: Event | None = None
) -> Recorded:
    """The event of entry ``raw``; ``first``: its stream's first event, whose trace and
    correlation an empty ``trace`` or ``corr`` stands for (None: left empty, as a replay reads
    events one by one)."""
    trace, cause = raw[b"trace"].decode(), raw[b"cause"].decode()
    if first is None:
        correlation = raw[b"corr"].decode() or trace
    else:
        trace = trace or first.trace
        correlation = raw[b"corr"].decode() or first.correlation
    event = Event(
        type=raw[b"type"].decode(),
        entity=entity,
        data=json.loads(raw[b"data"]),
        correlation=correlation,
        cause=cause if cause != PREVIOUS or seq == 1 else f"{entity}#{seq - 1}",
        trace=trace,
        sealed=raw.get(b"sealed", b""),
        v=int(raw[b"v"]),
        traceparent=raw.get(b"traceparent", b"").decode(),
    )
    return Recorded(sid.decode(), seq, event)
