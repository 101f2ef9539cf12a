"""Admission control: how many requests the gateway serves at once, and who waits.

A :class:`Lane` serves at most ``slots`` requests at once; up to ``max_queue`` more wait in
arrival order for a free slot, each for at most ``timeout_s`` (its deadline to start). A
request is refused (:class:`Refused`, answered 503 ``overloaded``) only when it could not
start: the queue is full, or its deadline to start passed while it waited. The refusal
carries a ``Retry-After`` computed from the queue: the requests ahead × the lane's recent mean
service time ÷ its slots, rounded up, at least 1 s: about when a request sent again could
start, not a constant.

Plain asyncio; the gateway keeps two lanes (every request with its body read, and memes being
made: the tree's capacity), see :mod:`memesys.http.middleware` and :mod:`memesys.http.app`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

PRIOR_SERVICE_S = 1.0  # the mean service time assumed before any request finished
SMOOTHING = 0.2  # weight of the latest service time in the running mean
MAX_RETRY_AFTER_S = 600


class Refused(Exception):
    """A request that could not start: ``reason`` is ``queue_full`` or ``queue_timeout``."""

    def __init__(self, lane: str, reason: str, retry_after: int) -> None:
        super().__init__(f"{lane}: {reason}")
        self.lane = lane
        self.reason = reason
        self.retry_after = retry_after


class Lane:
    """At most ``slots`` requests at once, ``max_queue`` more waiting up to ``timeout_s``."""

    def __init__(
        self,
        name: str,
        slots: int,
        max_queue: int,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1 or max_queue < 0 or timeout_s < 0:
            raise ValueError(f"{name}: slots >= 1, max_queue >= 0, timeout_s >= 0")
        self.name = name
        self.slots = slots
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.clock = clock
        self.active = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.mean_service_s = PRIOR_SERVICE_S
        self.served = 0

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def retry_after(self) -> int:
        """Seconds until a request sent now could start: the queue (this one included) drained
        at the lane's recent pace."""
        ahead = len(self.waiting) + 1
        return min(MAX_RETRY_AFTER_S, max(1, math.ceil(ahead * self.mean_service_s / self.slots)))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a slot for the block; yields the seconds spent waiting for it."""
        waited = await self.acquire()
        started = self.clock()
        try:
            yield waited
        finally:
            self.release(self.clock() - started)

    async def acquire(self) -> float:
        """A slot (the seconds waited for it), or :class:`Refused`."""
        if self.active < self.slots and not self.waiting:
            self.active += 1
            return 0.0
        if len(self.waiting) >= self.max_queue:
            raise Refused(self.name, "queue_full", self.retry_after())
        queued_at = self.clock()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.timeout_s)
        except BaseException:  # cancelled while waiting: a slot handed over is passed on
            self._leave(turn)
            raise
        if not turn.done():
            self._leave(turn)
            raise Refused(self.name, "queue_timeout", self.retry_after())
        return self.clock() - queued_at

    def _leave(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self.release(None)  # it was handed this slot: hand it on
            return
        turn.cancel()
        try:
            self.waiting.remove(turn)
        except ValueError:
            pass

    def release(self, service_s: float | None) -> None:
        """Give the slot back (to the first waiter, if any); ``service_s`` feeds the mean."""
        if service_s is not None:
            self.served += 1
            self.mean_service_s += SMOOTHING * (service_s - self.mean_service_s)
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to it: active is unchanged
                return
        self.active -= 1
