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
live server (``WRONGTYPE``, a script error) are not "down": they fail the one operation.

A live server can also *refuse writes* while it serves reads: ``MISCONF`` (it cannot write to
its disk: a full disk, a failed snapshot), ``NOREPLICAS`` (the embedded server's owner refuses
writes while its data disk is nearly full: :mod:`memesys.tree.redis_server`), ``READONLY`` (a
replica), ``OOM`` (maxmemory). A refused write fails with a :class:`StoreError` whose message
says why (:func:`refusal`); the first refusal and the first write accepted after it are logged
at WARNING, once per process and episode. The health check asks with a write that changes
nothing (:func:`write_probe`), so it tells "unreachable" from "writes refused".
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from memesys.storage.connection import probe_client
from memesys.storage.errors import StoreDown, StoreError

log = logging.getLogger("memesys.storage.availability")

# BusyLoadingError and AuthenticationError are ConnectionErrors in redis-py.
DOWN_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


# The error words of a live server that refuses writes, and why, in words.
REFUSALS = {
    "MISCONF": "cannot write to its disk",
    "NOREPLICAS": "too few replicas",
    "READONLY": "a read-only replica",
    "OOM": "out of memory (maxmemory)",
}
# At the start of Redis's reply, or after the "-" of an error a script passed on.
_REFUSAL = re.compile(r"(?:^|-)((" + "|".join(REFUSALS) + r")\b.*)")
DISK_FULL = "No space left on device"
WRITE_PROBE = "write-probe"  # a key under the prefix that memesys never writes


def write_probe(client: redis.Redis, prefix: str) -> None:
    """A write that changes nothing: DEL of a key memesys never writes. Redis refuses it as it
    refuses every write, and otherwise answers 0; nothing reaches the AOF, so no fsync."""
    client.delete(f"{prefix}:{WRITE_PROBE}")


def refusal(exc: BaseException, disk: str = "") -> str:
    """Why a live Redis refused a write, in words fit for /readyz ("" when ``exc`` is not a
    refusal). ``disk``: the data directory of the embedded server, whose owner makes it refuse
    writes (NOREPLICAS) only while that disk is nearly full. Redis's own words are quoted, never
    a command of ours (redis-py puts a failed pipeline command before them)."""
    if not isinstance(exc, redis.ResponseError):
        return ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    found = _REFUSAL.search(text.rsplit("caused error: ", 1)[-1])
    if found is None:
        return ""
    said, word = found.group(1)[:120], found.group(2)
    if word == "NOREPLICAS" and disk:
        try:
            free = f"{shutil.disk_usage(disk).free / 2**20:.1f} MiB"
        except OSError:
            free = "little"
        return f"writes refused: disk full ({free} free on the embedded server's data disk)"
    cause = "disk full" if DISK_FULL in said else REFUSALS[word]
    return f"writes refused: {cause} ({said})"


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

    ``probe`` asks Redis (:func:`write_probe`, or a PING) and raises on failure (a client with
    a short timeout: a SIGSTOPped server accepts the connection and never answers). ``name``
    says whose view this is in the log (``store worker-0``, ``task ledger``); ``disk`` is the
    embedded server's data directory ("" for a configured Redis: :func:`refusal`).
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        name: str = "store",
        initial_s: float = 0.05,
        max_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        disk: str = "",
    ) -> None:
        self._probe = probe
        self.name = name
        self.disk = disk
        self.initial_s = initial_s
        self.max_s = max(initial_s, max_s)
        self._clock = clock
        self.up = True
        self.reason = ""
        self.down_since: float | None = None
        self._delay = initial_s
        self._next_probe = 0.0
        self.outages = 0  # up -> down transitions seen
        self.refusing = ""  # why Redis refuses writes, as last seen ("": it accepts them)
        self._refused_at = 0.0

    def next_probe_in(self) -> float:
        """Seconds until a probe is due (0 when up or due now); while Redis refuses writes,
        ``max_s``: a write retried sooner would be refused again."""
        if self.up:
            return self.max_s if self.refusing else 0.0
        return max(0.0, self._next_probe - self._clock())

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
        missed = self._ask()
        if isinstance(missed, DOWN_ERRORS):
            self.failed(missed)
            return False
        down_for = self._clock() - (self.down_since or self._clock())
        log.warning("%s: redis is back after %.1f s down", self.name, down_for)
        self.up, self.reason, self.down_since = True, "", None
        self._delay = self.initial_s
        return True

    def _ask(self) -> redis.RedisError | None:
        """Probe once: the error Redis answered with, or could not answer for (None: it
        answered, and accepts writes if the probe is a write)."""
        try:
            self._probe()
        except redis.RedisError as exc:
            return exc
        return None

    def refused(self, exc: BaseException) -> str:
        """An operation (or a probe) failed with ``exc``: if it is a refusal of writes, note
        it (the first of an episode logged at WARNING) and return why; else ""."""
        reason = refusal(exc, self.disk)
        if reason and not self.refusing:
            self._refused_at = self._clock()
            log.warning(
                "%s: %s; they fail with store_error until redis accepts them again",
                self.name,
                reason,
            )
        if reason:
            self.refusing = reason
        return reason

    def accepted(self) -> None:
        """A write went through: the end of a refusal episode, if there was one."""
        if self.refusing:
            log.warning(
                "%s: redis accepts writes again after %.1f s",
                self.name,
                self._clock() - self._refused_at,
            )
            self.refusing = ""

    def health(self) -> str:
        """Why Redis cannot be used now ("": it answers and accepts writes), for a health check
        that must answer within its own bound: a probe on the short-timeout client, not an
        operation's socket timeout (a stopped server never answers). Down ("unreachable", "not
        answering in time", "loading its data") and refusing writes ("writes refused: disk full
        (...)") are told apart. It only reports: a stall of a few hundred milliseconds during a
        scrape does not fail the operations meanwhile (an operation that fails marks Redis
        down). While Redis is down, it first probes as :meth:`answers` does. Never raises."""
        if not self.up and not self.answers():
            return self.reason
        missed = self._ask()
        if missed is None:
            self.accepted()
            return ""
        if isinstance(missed, DOWN_ERRORS):
            return describe(missed)
        return self.refused(missed)  # "" for another error answer: it is up

    def require(self, what: str) -> None:
        """Fail fast with :class:`StoreDown` while Redis is down and no probe brings it back."""
        if not self.answers():
            raise StoreDown(f"redis is down ({self.reason}); {what} was not attempted")

    @contextlib.contextmanager
    def guard(self, what: str, write: bool = False) -> Iterator[None]:
        """Run one Redis operation: fail fast while down, mark down on a connection failure,
        note a refused write, and turn every Redis error into :class:`StoreError` naming
        ``what``. ``write``: the operation writes, so its success ends a refusal episode."""
        self.require(what)
        try:
            yield
        except DOWN_ERRORS as exc:
            self.failed(exc)
            raise StoreError(f"redis failed while {what}: {describe(exc)}") from exc
        except redis.RedisError as exc:
            reason = self.refused(exc)
            if reason:
                raise StoreError(f"redis failed while {what}: {reason}") from exc
            raise StoreError(f"redis failed while {what}: {exc}") from exc
        if write:
            self.accepted()


class AlwaysUp(Availability):
    """No fail-fast state: every operation is attempted (tools, tests of the raw store)."""

    def __init__(self) -> None:
        super().__init__(lambda: None, name="store")

    def failed(self, exc: BaseException) -> None:
        self.reason = describe(exc)


def availability_for(
    url: str, name: str, prefix: str, initial_s: float, max_s: float, disk: str = ""
) -> Availability:
    """The up/down view of Redis of one user (an actor, the in-process engine): write probes
    (:func:`write_probe`) on a short-timeout client of its own."""
    probe = probe_client(url)
    return Availability(
        lambda: write_probe(probe, prefix),
        name=name,
        initial_s=initial_s,
        max_s=max_s,
        disk=disk,
    )
