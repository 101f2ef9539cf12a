"""Rate limits per provider and model, shared by every process through Redis.

``rate_limit_rps`` requests a second and ``rate_limit_tpm`` (estimated) tokens a minute,
counted across every process and host on one Redis. 0 turns a limit off.

- Requests/s: one shared schedule (GCRA, the generic cell rate algorithm, as a virtual
  schedule): Redis holds the theoretical time of the next request, and every caller takes the
  next send time and moves it on by ``1 / rate_limit_rps`` in one atomic script on Redis's
  clock. Up to ``MAX_BURST`` calls (a judging group; never more than half a second's worth,
  at least one) may go at once; after that sends are spaced evenly, so any second holds at
  most ``rate_limit_rps`` plus that burst (1.4 R at 10 req/s, 1.2 R at 20). Then, at the
  moment of sending, the call is policed by the same algorithm on a key of its own that
  grants only "now": a process that stalled past several send times (starved of CPU, paused)
  sends them at the rate instead of all at once when it runs again.
  Before, a moving window of slots (the ``limits`` library's) counted the moment a slot was
  granted: it let R calls go in a few milliseconds and R more a second later, and a process
  that paced its sends after taking slots sent them up to a second late, so the provider saw
  up to 2 R in one second (tests/test_llm_limiter.py measured 38-42 at R = 20).
- Tokens/min: the ``limits`` library's moving window (an atomic Lua script over a Redis list
  of timestamps), tested before the request's send time is taken and charged after.
- Waiting counts against the request's deadline: a call whose send time (or the moment a
  full token window frees) is past its deadline fails at once (``llm_rate_limited``) with that
  wait as Retry-After, and takes no send time.
- Redis unreachable: each process falls back to its share of the limit (limit / processes,
  at least 1 a second) on a schedule and window of its own, logs it, counts it
  (``fallbacks``), and tries Redis again after ``RETRY_REDIS_S``.
- Provider 429s: the rate this process asks for adapts down (halved, at most once a second,
  to no less than ``MIN_FACTOR`` of the configured one) and climbs back by ``CLIMB`` every
  ``CLIMB_EVERY_S`` without a 429. Its calls are spaced by its own (lower) rate on the shared
  schedule, so a lowered rate slows the others too.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable

import redis
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis.commands.core import Script

from memesys.config.capacity import JUDGING_CALLS_PER_MEME

log = logging.getLogger("memesys.llm.limiter")

RETRY_REDIS_S = 5.0
MIN_FACTOR = 0.1
CLIMB = 0.1
CLIMB_EVERY_S = 5.0
# Calls that may go at once: a meme's judging group (three verifiers and the scorer), never
# more than half a second's worth, at least one. 4 at 10 req/s: a second holds at most 1.4 R.
MAX_BURST = JUDGING_CALLS_PER_MEME
WAKE_JITTER_S = 0.003  # spreads the callers waiting for the same token window

# KEYS[1]: the time the next request may go at the latest spacing (the GCRA's theoretical
# arrival time), in seconds on Redis's clock. ARGV: the spacing, the burst tolerance, the
# caller's longest wait (s). Answers {1, wait} (the caller's send time is now + wait, and the
# schedule moved on) or {0, wait} (not before its deadline: nothing taken).
_SCHEDULE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, string.format('%.6f', wait)} end
local ttl_ms = math.ceil((tat + interval - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', tat + interval), 'PX', ttl_ms)
return {1, string.format('%.6f', wait)}
"""


class _LocalSchedule:
    """The same schedule in this process (Redis unreachable, or none configured)."""

    def __init__(self) -> None:
        self._tat = 0.0
        self._lock = threading.Lock()

    def __call__(self, interval: float, tolerance: float, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now)
            wait = max(0.0, tat - tolerance - now)
            if wait > max_wait:
                return False, wait
            self._tat = tat + interval
            return True, wait


class _PerMinute(RateLimitItemPerMinute):
    """A 1-minute limit whose key does not depend on its amount: every process (whatever limit
    it asks for now) shares one window."""

    def key_for(self, *identifiers: object) -> str:
        return "/".join([self.namespace, *map(str, identifiers), "minute"])


class NoSlot(Exception):
    """No slot before the deadline; ``retry_after``: seconds until one frees."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"the rate limit of {name} is reached")
        self.retry_after = retry_after


def _storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


class Limiter:
    """The limits of one provider+model, as this process applies them."""

    def __init__(
        self,
        name: str,
        rps: int,
        tpm: int,
        redis_url: str = "",
        key_prefix: str = "memesys",
        processes: int = 1,
    ) -> None:
        self.name = name
        self.rps, self.tpm = rps, tpm
        self.processes = max(1, processes)
        self._namespace = f"{key_prefix}:llm:limit"
        self._ids = (name,)
        self._schedule_key = f"{self._namespace}/{name}/schedule"
        self._cap_key = f"{self._namespace}/{name}/sent"
        # _SCHEDULE, run on the schedule's key and on the send cap's
        self._gcra: Script | None = None
        self._shared_window: MovingWindowRateLimiter | None = None
        if redis_url:
            client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._gcra = client.register_script(_SCHEDULE)
            self._shared_window = MovingWindowRateLimiter(
                storage_from_string(
                    _storage_uri(redis_url), socket_timeout=0.5, socket_connect_timeout=0.5
                )
            )
        self._local_schedule = _LocalSchedule()
        self._local_cap = _LocalSchedule()
        self._local_window = MovingWindowRateLimiter(MemoryStorage())
        self._lock = threading.Lock()
        self._factor = 1.0
        self._changed = time.monotonic()
        self._local_until = 0.0  # monotonic: Redis is skipped until then
        # counters (metrics)
        self.waits = 0
        self.waited_s = 0.0
        self.refusals = 0
        self.fallbacks = 0

    @property
    def enabled(self) -> bool:
        return self.rps > 0 or self.tpm > 0

    @property
    def factor(self) -> float:
        return self._factor

    def acquire(self, tokens: int, deadline: float | None, max_wait_s: float) -> float:
        """Take a send time for a request of ``tokens`` estimated tokens and wait for it, then
        a place in the send cap, at most until ``deadline`` (wall clock; None: ``max_wait_s``);
        the seconds waited. NoSlot at once when the send time, or the moment a full window
        frees, is past it."""
        if not self.enabled:
            return 0.0
        began = time.time()
        end = deadline if deadline is not None else began + max_wait_s
        self._take(functools.partial(self._reserve, tokens), end)
        if self.rps > 0:
            self._take(self._cap, end)
        waited = time.time() - began
        if waited > 0.0005:
            self.waits += 1
            self.waited_s += waited
        return waited

    def _take(self, step: Callable[[bool, float], tuple[bool, float]], end: float) -> None:
        """Run ``step`` until it grants, sleeping the wait it names; NoSlot once that wait
        would end past ``end``."""
        while True:
            ok, wait = self._on_storage(step, end - time.time())
            if ok:
                if wait > 0:
                    time.sleep(wait)
                return
            if time.time() + wait >= end:
                self.refusals += 1
                raise NoSlot(self.name, wait)
            time.sleep(wait + random.uniform(0, WAKE_JITTER_S))

    def _on_storage(
        self, step: Callable[[bool, float], tuple[bool, float]], max_wait: float
    ) -> tuple[bool, float]:
        """``step(local, max_wait)`` on Redis, or on this process's share while Redis is
        unreachable: (granted, the wait before sending) or (False, seconds until it may be)."""
        local = time.monotonic() < self._local_until or self._gcra is None
        try:
            return step(local, max_wait)
        except (redis.RedisError, StorageError) as exc:
            if local:
                raise
            with self._lock:
                if time.monotonic() >= self._local_until:
                    self.fallbacks += 1
                    log.warning(
                        "llm limiter %s: Redis unreachable (%s): this process keeps "
                        "to its share (1/%d) of the limit for %g s",
                        self.name,
                        type(exc).__name__,
                        self.processes,
                        RETRY_REDIS_S,
                    )
                self._local_until = time.monotonic() + RETRY_REDIS_S
            return step(True, max_wait)

    def _rate(self, local: bool) -> tuple[float, int]:
        """(requests/s, burst) this process asks for now."""
        rate = max(1.0, self.rps * self._factor / (self.processes if local else 1))
        return rate, max(1, min(MAX_BURST, int(rate / 2)))

    def _reserve(self, tokens: int, local: bool, max_wait: float) -> tuple[bool, float]:
        """The token window's test, the request's send time on the schedule, the tokens'
        charge."""
        share = self.processes if local else 1
        shared = None if local else self._shared_window  # (there is one when not local)
        window = self._local_window if shared is None else shared
        tokens_item = None
        if self.tpm > 0:
            tokens_item = _PerMinute(
                max(1, int(self.tpm * self._factor) // share), namespace=self._namespace
            )
            cost = max(1, min(tokens, tokens_item.amount))
            if not window.test(tokens_item, *self._ids, cost=cost):
                return False, self._until_free(window, tokens_item)
        wait = 0.0
        if self.rps > 0:
            ok, wait = self._schedule(
                self._schedule_key, self._local_schedule, local, max(0.0, max_wait)
            )
            if not ok:
                return False, wait
        if tokens_item is not None and not window.hit(tokens_item, *self._ids, cost=cost):
            return False, self._until_free(window, tokens_item)  # raced: the send time is lost
        return True, wait

    def _cap(self, local: bool, max_wait: float) -> tuple[bool, float]:
        """The moment of sending, policed: the same algorithm and burst on a key of its own,
        granting only now (never a later time). Calls that follow their send times pass at
        once (one that is a little early waits that little); a process that stalled past
        several of them (starved of CPU, paused) sends them at the rate, not all at once."""
        return self._schedule(self._cap_key, self._local_cap, local, 0.0)

    def _schedule(
        self, key: str, local_schedule: _LocalSchedule, local: bool, max_wait: float
    ) -> tuple[bool, float]:
        """The schedule under ``key`` in Redis (or ``local_schedule`` in this process) at the
        rate and burst this process asks for now: (granted, the wait before sending) or
        (False, the wait that would have been)."""
        rate, burst = self._rate(local)
        interval = 1.0 / rate
        tolerance = (burst - 1) * interval
        if local or self._gcra is None:  # (no script: never anything but local)
            return local_schedule(interval, tolerance, max_wait)
        ok, raw = self._gcra(keys=[key], args=[interval, tolerance, max_wait])
        return bool(ok), float(raw)

    def _until_free(self, window: MovingWindowRateLimiter, item: object) -> float:
        stats = window.get_window_stats(item, *self._ids)  # type: ignore[arg-type]
        return max(0.001, stats.reset_time - time.time())

    # ------------------------------------------------------------------ adapting

    def provider_limited(self) -> None:
        """A 429 from the provider: ask for less."""
        with self._lock:
            now = time.monotonic()
            if now - self._changed >= 1.0 and self._factor > MIN_FACTOR:
                self._factor = max(MIN_FACTOR, self._factor / 2)
                self._changed = now
                log.warning(
                    "llm limiter %s: provider 429: limit now %.0f%% of the configured",
                    self.name,
                    self._factor * 100,
                )

    def provider_answered(self) -> None:
        """An answer: climb back towards the configured limit, one step per CLIMB_EVERY_S."""
        if self._factor >= 1.0:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._changed >= CLIMB_EVERY_S:
                self._factor = min(1.0, self._factor + CLIMB)
                self._changed = now


_limiters: dict[tuple[str, str, int, int], Limiter] = {}
_registry_lock = threading.Lock()


def limiter_for(
    name: str,
    rps: int,
    tpm: int,
    redis_url: str = "",
    key_prefix: str = "memesys",
    processes: int = 1,
) -> Limiter:
    """The process's limiter of ``name`` (provider/model)."""
    key = (redis_url, f"{key_prefix}|{name}", rps, tpm)
    with _registry_lock:
        found = _limiters.get(key)
        if found is None:
            found = _limiters[key] = Limiter(name, rps, tpm, redis_url, key_prefix, processes)
        return found


def forget_all() -> None:
    with _registry_lock:
        _limiters.clear()
