"""A circuit breaker per provider and model, its state shared by every process through Redis.

pybreaker's :class:`~pybreaker.CircuitBreaker` with :class:`~pybreaker.CircuitRedisStorage`
(a synchronous ``redis.Redis``): ``fail_max`` consecutive failed attempts, counted in Redis
(INCR) across every process, open it for ``reset_s`` seconds; then one half-open probe; a
successful probe closes it, a failed one opens it again. Each attempt is awaited inside
``with cb.calling():`` (never ``cb.call_async``, which is Tornado's); pybreaker's lock is held
only around its bookkeeping, not across the await. A cancelled attempt is not a failure.

What pybreaker does not do, done here:

- one probe, cluster-wide: once the reset time has passed, only the process that wins a Redis
  ``SET NX`` (expiring after the probe's timeout) makes the attempt; the others fail fast;
- fail fast without Redis round trips: a process that has seen the breaker open remembers
  until when (the open period cannot end earlier: only a probe closes it), and refuses calls
  in microseconds until then;
- what counts: timeouts, connection errors, 5xx and malformed answers; a 4xx caused by our
  request and a 429 are answers from a working provider, never failures (being answers, they
  end a run of consecutive failures);
- at most one Redis round trip per successful attempt instead of three, shared by the calls
  that start together (:class:`SharedStorage`).

Without a Redis URL (a bare build_lm, unit tests) the state lives in the process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar, cast

import pybreaker
import redis

from memesys.llm.errors import CLIENT, DEADLINE, RATE_LIMITED

log = logging.getLogger("memesys.llm.breaker")

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
STATES = (CLOSED, OPEN, HALF_OPEN)


class BreakerOpen(Exception):
    """The breaker refused the attempt; ``retry_after``: seconds until the next probe."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(f"the circuit breaker of {model} is open")
        self.retry_after = retry_after


def _not_a_failure(exc: BaseException) -> bool:
    """A 4xx of ours or a 429 (the provider answered), an attempt cancelled (a hedge that lost
    its race, a request past its deadline) or one the request's deadline cut to less than a
    typical answer's time: the breaker does not count it."""
    return isinstance(exc, asyncio.CancelledError) or getattr(exc, "kind", None) in (
        CLIENT,
        RATE_LIMITED,
        DEADLINE,
    )


class SharedStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, read once per attempt.

    pybreaker reads the state when the transport checks the breaker and again when the attempt
    enters ``calling()``, microseconds later, then writes the failure count back to 0 after
    every success: three round trips per call, each on the hot path of every stage. Here the
    state and the count come in one MGET; a read younger than ``FRESH_S`` is reused by every
    thread of the process (a judging group's four calls start together: one read, not four),
    and a failure counted here drops it; a success resets the count only if that read found it
    above 0. (A failure elsewhere between that read and this success is then not cleared by
    it: a success that raced a failure ends no run, the same as if it had come first.)"""

    FRESH_S = 0.01

    def __init__(self, state: str, client: redis.Redis, namespace: str) -> None:
        # (monotonic time, state, failure count or None if unknown) of the last read, shared
        # by the threads; and per thread the read its attempt went on, which decides whether
        # its success resets the count
        self._read: tuple[float, str, int | None] | None = None
        self._reading = threading.Lock()  # calls that start together wait for one MGET
        self._used = threading.local()
        super().__init__(state, client, namespace=namespace)

    @property
    def state(self) -> str:
        read = self._fresh()
        if read is None:
            with self._reading:
                read = self._fresh() or self._fetch()
        self._used.read = read
        return read[1]

    @state.setter
    def state(self, state: str) -> None:
        self._read = None
        # pybreaker's own setter (mypy does not model a property read off its class)
        pybreaker.CircuitRedisStorage.state.fset(self, state)  # type: ignore[attr-defined]

    def _fresh(self) -> tuple[float, str, int | None] | None:
        read = self._read
        return read if read is not None and time.monotonic() - read[0] < self.FRESH_S else None

    def _fetch(self) -> tuple[float, str, int | None]:
        """One MGET; Redis failing reads as the fallback state (kept as briefly as a read, so
        that callers waiting on the lock do not wait out one socket timeout each)."""
        count: int | None
        try:
            raw_state, raw_count = cast(
                list[bytes | None],
                self._redis.mget(self._namespace("state"), self._namespace("fail_counter")),
            )
        except redis.RedisError:
            self.logger.exception("RedisError: falling back to default circuit state")
            state, count = self._fallback_circuit_state, None
        else:
            if raw_state is None:  # missing (flushed, expired): re-initialized as pybreaker does
                self._initialize_redis_state(self._fallback_circuit_state)
                state, count = self._fallback_circuit_state, 0
            else:
                state, count = raw_state.decode("utf-8"), int(raw_count or 0)
        read = self._read = (time.monotonic(), state, count)
        return read

    def increment_counter(self) -> None:
        self._read = None
        super().increment_counter()

    def reset_counter(self) -> None:
        used = getattr(self._used, "read", None)
        if used is None or used[2] != 0:
            super().reset_counter()
            self._read = self._used.read = None


class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        before = getattr(old, "name", None)
        after = getattr(new, "name", None)
        if before != after:
            log.warning("llm breaker %s: %s -> %s", self.owner.name, before, after)
            for hook in self.owner.on_transition:
                hook(self.owner.name, before, after)


class Breaker:
    """The breaker of one provider+model, as seen from this process."""

    def __init__(
        self,
        name: str,
        fail_max: int,
        reset_s: float,
        probe_timeout_s: float,
        client: redis.Redis | None = None,
        namespace: str = "",
    ) -> None:
        self.name = name
        self.fail_max = fail_max
        self.reset_s = reset_s
        self.probe_timeout_s = probe_timeout_s
        self.on_transition: list[Callable[[str, str | None, str | None], None]] = []
        self._redis = client
        self._probe_key = f"{namespace}:probe" if namespace else ""
        self._probing = threading.Lock()  # the process-local probe claim (no Redis)
        self._open_until = 0.0  # wall clock; a cache of what Redis said
        storage: pybreaker.CircuitBreakerStorage = pybreaker.CircuitMemoryStorage(CLOSED)
        if client is not None:
            try:
                storage = SharedStorage(CLOSED, client, namespace=namespace)
            except redis.RedisError as exc:
                log.warning(
                    "llm breaker %s: Redis unreachable (%s): this process keeps its "
                    "own breaker state",
                    name,
                    exc,
                )
                self._redis = None
        self.cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_s,
            exclude=[_not_a_failure],
            listeners=[_Transitions(self)],
            state_storage=storage,
            name=name,
            throw_new_error_on_trip=False,
        )

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> str:
        return self.cb.current_state

    def until_probe(self, now: float | None = None) -> float:
        """Seconds until the next probe may run (0 when it may run now, or when closed)."""
        opened: datetime | None = self.cb._state_storage.opened_at
        if opened is None:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, opened.timestamp() + self.reset_s - now)

    # ------------------------------------------------------------------ calling

    def check(self) -> str:
        """The state, or BreakerOpen while open before its probe time."""
        now = time.time()
        if now < self._open_until:
            raise BreakerOpen(self.name, self._open_until - now)
        state = self.state
        if state == OPEN:
            wait = self.until_probe(now)
            if wait > 0:
                self._open_until = now + wait
                raise BreakerOpen(self.name, wait)
        return state

    async def run(self, attempt: Callable[[], Awaitable[T]], state: str | None = None) -> T:
        """``await attempt()`` through the breaker; BreakerOpen without calling it while open.
        ``state``: what :meth:`check` just answered (saves reading it again)."""
        state = self.check() if state is None else state
        if state == CLOSED:
            return await self._through(attempt)
        # open past its reset time, or half-open: one probe, cluster-wide
        if not self._claim_probe():
            raise BreakerOpen(self.name, min(self.reset_s, self.probe_timeout_s))
        try:
            return await self._through(attempt)
        finally:
            self._release_probe()

    async def _through(self, attempt: Callable[[], Awaitable[T]]) -> T:
        # pybreaker's calling() holds its lock only around its bookkeeping, not the block
        try:
            with self.cb.calling():
                return await attempt()
        except pybreaker.CircuitBreakerError as exc:  # opened by another process meanwhile
            raise BreakerOpen(self.name, max(self.until_probe(), 0.001)) from exc
        except BaseException:
            # a failure may have opened it: remember until when (no Redis read on success)
            if self.cb.current_state == OPEN:
                wait = self.until_probe()
                self._open_until = time.time() + wait if wait > 0 else 0.0
            raise

    def _claim_probe(self) -> bool:
        if not self._probing.acquire(blocking=False):
            return False
        if self._redis is None:
            return True
        try:
            ttl_ms = max(1, int((self.probe_timeout_s + 1.0) * 1000))
            if self._redis.set(self._probe_key, "1", nx=True, px=ttl_ms):
                return True
        except redis.RedisError:
            log.warning("llm breaker %s: Redis unreachable; probing from this process", self.name)
            return True
        self._probing.release()
        return False

    def _release_probe(self) -> None:
        if self._redis is not None:
            try:
                self._redis.delete(self._probe_key)
            except redis.RedisError:
                pass
        self._probing.release()


_breakers: dict[tuple[str, str], Breaker] = {}
_lock = threading.Lock()


def breaker_for(
    name: str,
    fail_max: int,
    reset_s: float,
    probe_timeout_s: float,
    redis_url: str = "",
    key_prefix: str = "memesys",
) -> Breaker:
    """The process's breaker of ``name`` (provider/model): one object per process, its state
    in Redis under ``<key_prefix>:llm:breaker:<name>`` when ``redis_url`` is given."""
    key = (redis_url, f"{key_prefix}|{name}")
    with _lock:
        found = _breakers.get(key)
        if found is None:
            client = (
                redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
                if redis_url
                else None
            )
            found = Breaker(
                name,
                fail_max,
                reset_s,
                probe_timeout_s,
                client,
                f"{key_prefix}:llm:breaker:{name}" if redis_url else "",
            )
            _breakers[key] = found
        return found


def forget_all() -> None:
    """Drop the process's breakers (tests)."""
    with _lock:
        _breakers.clear()
