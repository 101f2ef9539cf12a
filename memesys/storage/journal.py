"""A meme's progress events, appended to the event log as its maker reports them.

The maker's event loop must not wait on Redis for each stage, so :meth:`MemeJournal.record`
seals the event and queues it; one append at a time runs in a thread (``run``) and takes every
event queued meanwhile in one script call, at the version the journal has reached (so the
meme's stream holds its events in order, and a writer that raced it would be refused). The
meme's key is made here and written by its first append (the sealing needs no round trip).

An append that fails (Redis away) is logged once; the meme goes on: its ``completed`` event,
written with the record by the store, expects the version the journal reached, so the log
stays consistent, only with fewer progress events.

This queue is the event log's only lag: every other event is appended with its projection in
one script (:mod:`memesys.storage.eventlog`), so no projection is ever behind the log.
:func:`backlog` tells how many events this process's journals recorded and have not appended
yet, and how long the oldest has waited (a generator worker reports them with its status).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memesys.storage.errors import StoreError
from memesys.storage.eventlog import PREVIOUS, Event
from memesys.storage.projections import meme_entity
from memesys.storage.sealing import Sealer

log = logging.getLogger("memesys.storage.journal")

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], Awaitable[T]]


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


_lock = threading.Lock()  # the journals are written in the event loop, read in the actor
_waiting: dict[int, deque[float]] = {}  # id of a journal -> monotonic times of its queued


def _forget(journal_id: int) -> None:
    with _lock:
        _waiting.pop(journal_id, None)


def backlog() -> tuple[int, float]:
    """This process's events recorded and not yet appended, and the seconds the oldest has
    waited (0 when there is none). An event whose append failed is dropped, not waiting."""
    now = time.monotonic()
    with _lock:
        events = sum(len(times) for times in _waiting.values())
        oldest = min((times[0] for times in _waiting.values() if times), default=now)
    return events, now - oldest


class MemeJournal:
    """The events of meme ``meme_id`` (correlation: the request's or task's id; ``trace``: the
    meme's trace id), appended through ``append`` (the store's guarded append)."""

    def __init__(
        self,
        sealer: Sealer,
        append: Callable[[list[Event], int, list[Any]], object],
        meme_id: str,
        correlation: str,
        trace: str,
        run: Runner[object] = in_thread,
    ) -> None:
        self.entity = meme_entity(meme_id)
        self._sealer, self._append, self._run = sealer, append, run
        self.correlation, self.trace = correlation, trace
        self._key = sealer.new_key()
        self._cipher = AESGCM(self._key)  # made once: its key schedule costs a seal's time
        self._queued: list[Event] = []
        self._recorded = 0  # events recorded (queued or appended)
        self.version = 0  # events appended
        self._flushing: asyncio.Future[None] | None = None
        self._failed = False
        # a meme abandoned between its records and its save leaves nothing waiting
        weakref.finalize(self, _forget, id(self))

    def record(
        self,
        type: str,
        data: Mapping[str, Any],
        personal: Mapping[str, Any] | None = None,
        now: bool = True,
    ) -> None:
        sealed = self._sealer.seal(self.entity, personal, self._cipher) if personal else b""
        if self._recorded:  # the trace and correlation of the first event stand for the rest
            event = Event(type, self.entity, dict(data), "", PREVIOUS, "", sealed)
        else:
            event = Event(
                type, self.entity, dict(data), self.correlation, "request", self.trace, sealed
            )
        self._recorded += 1
        self._queued.append(event)
        with _lock:
            _waiting.setdefault(id(self), deque()).append(time.monotonic())
        if now and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._queued and not self._failed:
            batch, self._queued = self._queued, []
            key = [] if self.version else [self.key_write]
            call = functools.partial(self._append, batch, self.version, key)
            try:
                await self._run(call)
            except (StoreError, redis.RedisError, OSError) as exc:
                self._failed = True
                self._done_waiting()
                log.warning(
                    "%s: %d progress events not appended to the event log (%s); the meme goes on",
                    self.entity,
                    len(batch) + len(self._queued),
                    exc,
                )
                return
            self.version += len(batch)
            with _lock:
                times = _waiting.get(id(self), deque())
                for _ in range(min(len(batch), len(times))):
                    times.popleft()
                if not times:
                    _waiting.pop(id(self), None)

    async def settled(self) -> tuple[int, tuple[Any, ...]]:
        """Wait for the appends under way; the meme's version (events appended) and the events
        recorded after them, handed over (the store appends them with ``completed``). Before
        the first append they are appended here: the meme's key goes with that append."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        if not self.version and not self._failed:
            await self._flush()  # the meme's key goes with its first append: not the store's
        events, self._queued = tuple(self._queued), []
        self._done_waiting()  # what is left goes with the store's write of the record
        return self.version, events

    def _done_waiting(self) -> None:
        _forget(id(self))

    @property
    def key_write(self) -> tuple[str, str, bytes, str]:
        """The write that records the meme's key (it goes with its first append)."""
        return ("SET", self._sealer.key_name(self.entity), self._key, "NX")
