"""Whether Redis is up, as one process sees it: fail fast while it is down, probe it back.

A dependency error is not a crash. An operation that cannot reach Redis (connection refused,
a timeout, a server still loading its data) marks the store *down*; while it is down every
operation fails at once with :class:`StoreDown` instead of waiting out a socket timeout per
request, and nothing queues behind a dead server. Once the backoff has passed, the next
operation (or :meth:`Availability.answers`) first probes Redis (``PING`` on a client with a short
timeout); an answer brings the store back *up*. The backoff doubles from ``initial_s`` to
``max_s`` while the store stays down, so a long outage costs one short probe per ``max_s`` and
the service is back at most ``max_s`` plus one probe after Redis is.

Both transitions are logged once, at WARNING, with the reason. Errors that are answers from a
live server (``WRONGTYPE``, ``OOM``, a script error) are not "down": they fail the one operation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from memesys.storage.connection import probe_client
from memesys.storage.errors import StoreDown, StoreError

log = logging.getLogger("memesys.storage.availability")

# BusyLoadingError and AuthenticationError are ConnectionErrors in redis-py.
DOWN_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def describe(exc: BaseException) -> str:
    """A short, clean reason (no socket path, URL or address: it may reach /readyz)."""
    if isinstance(exc, redis.BusyLoadingError):
        return "loading its data"
    if isinstance(exc, redis.AuthenticationError):
        return "refusing the credentials"
    if isinstance(exc, redis.TimeoutError):
        return "not answering in time"
    return "unreachable"


class Availability:
    """The up/down state of one process's Redis connection, with the probe schedule.

    ``probe`` pings Redis and raises on failure (a client with a short timeout: a SIGSTOPped
    server accepts the connection and never answers). ``name`` says whose view this is in
    the log (``store worker-0``, ``task ledger``).
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        name: str = "store",
        initial_s: float = 0.05,
        max_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.name = name
        self.initial_s = initial_s
        self.max_s = max(initial_s, max_s)
        self._clock = clock
        self.up = True
        self.reason = ""
        self.down_since: float | None = None
        self._delay = initial_s
        self._next_probe = 0.0
        self.outages = 0  # up -> down transitions seen

    def next_probe_in(self) -> float:
        """Seconds until a probe is due (0 when up or due now)."""
        return 0.0 if self.up else max(0.0, self._next_probe - self._clock())

    def failed(self, exc: BaseException) -> None:
        """An operation could not reach Redis: down now (or still), next probe after backoff."""
        now = self._clock()
        reason = describe(exc)
        if self.up:
            self.up, self.down_since, self.outages = False, now, self.outages + 1
            self._delay = self.initial_s
            log.warning(
                "%s: redis is down (%s: %s); failing fast, probing every %g-%g s",
                self.name,
                reason,
                exc,
                self.initial_s,
                self.max_s,
            )
        else:
            self._delay = min(self.max_s, self._delay * 2)
        self.reason = reason
        self._next_probe = now + self._delay

    def answers(self) -> bool:
        """Whether Redis answers, as far as this process can tell without waiting on a dead
        server: yes while it is up; while it is down, no until a probe is due, then what the
        probe finds. Never raises. (The report for a health check is :meth:`health`.)"""
        if self.up:
            return True
        if self._clock() < self._next_probe:
            return False
        missed = self._unanswered()
        if missed is not None:
            self.failed(missed)
            return False
        down_for = self._clock() - (self.down_since or self._clock())
        log.warning("%s: redis is back after %.1f s down", self.name, down_for)
        self.up, self.reason, self.down_since = True, "", None
        self._delay = self.initial_s
        return True

    def _unanswered(self) -> BaseException | None:
        """Probe once: why Redis did not answer (None: it did)."""
        try:
            self._probe()
        except DOWN_ERRORS as exc:
            return exc
        except redis.RedisError:  # a live server answered: it is up
            pass
        return None

    def health(self) -> str:
        """Why Redis cannot be used now ("": it answers), for a health check that must answer
        within its own bound: a probe on the short-timeout client, not an operation's socket
        timeout (a stopped server never answers). It only reports: a stall of a few hundred
        milliseconds during a scrape does not fail the operations meanwhile (an operation
        that fails marks Redis down). While Redis is down, this is :meth:`answers`. Never
        raises."""
        if not self.up:
            return "" if self.answers() else self.reason
        missed = self._unanswered()
        return "" if missed is None else describe(missed)

    def require(self, what: str) -> None:
        """Fail fast with :class:`StoreDown` while Redis is down and no probe brings it back."""
        if not self.answers():
            raise StoreDown(f"redis is down ({self.reason}); {what} was not attempted")

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run one Redis operation: fail fast while down, mark down on a connection failure,
        and turn every Redis error into :class:`StoreError` naming ``what``."""
        self.require(what)
        try:
            yield
        except DOWN_ERRORS as exc:
            self.failed(exc)
            raise StoreError(f"redis failed while {what}: {describe(exc)}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis failed while {what}: {exc}") from exc


class AlwaysUp(Availability):
    """No fail-fast state: every operation is attempted (tools, tests of the raw store)."""

    def __init__(self) -> None:
        super().__init__(lambda: None, name="store")

    def failed(self, exc: BaseException) -> None:
        self.reason = describe(exc)


def availability_for(url: str, name: str, initial_s: float, max_s: float) -> Availability:
    """The up/down view of Redis of one user (an actor, the in-process engine): probes on a
    short-timeout client of its own."""
    probe = probe_client(url)
    return Availability(probe.ping, name=name, initial_s=initial_s, max_s=max_s)
