"""Rate limits per provider and model, shared by every process through Redis.

The ``limits`` library's moving window (an atomic Lua script over a Redis list of timestamps):
``rate_limit_rps`` requests in any 1-second window and ``rate_limit_tpm`` (estimated) tokens in
any 60-second window, counted across every process and host on one Redis. 0 turns a limit off.

- Waiting for a slot counts against the request's deadline: the wait is the moment the oldest
  entry of a full window leaves it; a call that cannot get a slot before its deadline fails at
  once (``llm_rate_limited``) with that wait as Retry-After.
- Redis unreachable: each process falls back to its share of the limit (limit / processes,
  at least 1) in a local moving window, logs it, counts it (``fallbacks``), and tries Redis
  again after ``RETRY_REDIS_S``.
- Pacing: a process sends the calls it got slots for at least ``1 / rate_limit_rps`` apart
  (the wait counts against the deadline), so callers
  waiting for a full window do not all take the freed slots in one burst (a moving window
  alone allows R requests in a few milliseconds, then R more a second later: bursts that
  latency jitter turns into windows of up to 2 R at the provider).
- Provider 429s: the limit this process asks for adapts down (halved, at most once a second,
  to no less than ``MIN_FACTOR`` of the configured one) and climbs back by ``CLIMB`` every
  ``CLIMB_EVERY_S`` without a 429. The window in Redis is one list whatever the limit a caller
  asks for, so a lowered limit holds for everyone's entries.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Optional

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("memesys.llm.limiter")

RETRY_REDIS_S = 5.0
MIN_FACTOR = 0.1
CLIMB = 0.1
CLIMB_EVERY_S = 5.0
WAKE_JITTER_S = 0.003  # spreads the callers waiting for the same slot


class _PerSecond(RateLimitItemPerSecond):
    """A 1-second limit whose key does not depend on its amount: every process (whatever limit
    it asks for now) shares one window."""

    def key_for(self, *identifiers: object) -> str:
        return "/".join([self.namespace, *map(str, identifiers), "second"])


class _PerMinute(RateLimitItemPerMinute):
    def key_for(self, *identifiers: object) -> str:
        return "/".join([self.namespace, *map(str, identifiers), "minute"])


class NoSlot(Exception):
    """No slot before the deadline; ``retry_after``: seconds until one frees."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"the rate limit of {name} is reached")
        self.retry_after = retry_after


def _storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://"):]
    return redis_url


class Limiter:
    """The limits of one provider+model, as this process applies them."""

    def __init__(self, name: str, rps: int, tpm: int, redis_url: str = "",
                 key_prefix: str = "memesys", processes: int = 1) -> None:
        self.name = name
        self.rps, self.tpm = rps, tpm
        self.processes = max(1, processes)
        namespace = f"{key_prefix}:llm:limit"
        self._ids = (name,)
        self._shared: Optional[MovingWindowRateLimiter] = None
        if redis_url:
            self._shared = MovingWindowRateLimiter(storage_from_string(
                _storage_uri(redis_url), socket_timeout=0.5, socket_connect_timeout=0.5))
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._namespace = namespace
        self._lock = threading.Lock()
        self._factor = 1.0
        self._changed = time.monotonic()
        self._local_until = 0.0  # monotonic: Redis is skipped until then
        self._next_at = 0.0  # wall clock: this process's next grant, at the earliest
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

    def _items(self, local: bool) -> list[tuple[object, int]]:
        share = self.processes if local else 1
        items: list[tuple[object, int]] = []
        if self.rps > 0:
            amount = max(1, int(self.rps * self._factor) // share)
            items.append((_PerSecond(amount, namespace=self._namespace), 1))
        if self.tpm > 0:
            amount = max(1, int(self.tpm * self._factor) // share)
            items.append((_PerMinute(amount, namespace=self._namespace), 0))
        return items

    def _try(self, tokens: int) -> tuple[bool, float]:
        """(got a slot, else seconds until one may free)."""
        local = time.monotonic() < self._local_until or self._shared is None
        limiter = self._local if local else self._shared
        assert limiter is not None
        try:
            return self._try_on(limiter, local, tokens)
        except Exception as exc:  # the storage's own errors: redis's, wrapped or not
            if local:
                raise
            with self._lock:
                if time.monotonic() >= self._local_until:
                    self.fallbacks += 1
                    log.warning("llm limiter %s: Redis unreachable (%s): this process keeps "
                                "to its share (1/%d) of the limit for %g s", self.name,
                                type(exc).__name__, self.processes, RETRY_REDIS_S)
                self._local_until = time.monotonic() + RETRY_REDIS_S
            return self._try_on(self._local, True, tokens)

    def _try_on(self, limiter: MovingWindowRateLimiter, local: bool,
                tokens: int) -> tuple[bool, float]:
        items = self._items(local)
        for item, _ in items:  # tokens first (tested, not taken) then requests (taken)
            cost = 1 if isinstance(item, _PerSecond) else max(1, min(tokens, item.amount))
            if isinstance(item, _PerMinute) and not limiter.test(item, *self._ids, cost=cost):
                return False, self._until_free(limiter, item)
        for item, _ in items:
            cost = 1 if isinstance(item, _PerSecond) else max(1, min(tokens, item.amount))
            if not limiter.hit(item, *self._ids, cost=cost):
                return False, self._until_free(limiter, item)
        return True, 0.0

    def _until_free(self, limiter: MovingWindowRateLimiter, item: object) -> float:
        stats = limiter.get_window_stats(item, *self._ids)  # type: ignore[arg-type]
        return max(0.001, stats.reset_time - time.time())

    def acquire(self, tokens: int, deadline: Optional[float], max_wait_s: float) -> float:
        """Take a slot for a request of ``tokens`` estimated tokens, waiting for one at most
        until ``deadline`` (wall clock; None: ``max_wait_s``); the seconds waited. NoSlot when
        none frees in time."""
        if not self.enabled:
            return 0.0
        began = time.time()
        end = deadline if deadline is not None else began + max_wait_s
        while True:
            if self.rps > 0 and self._next_at >= end:  # the pacing queue is past the deadline
                self.refusals += 1
                raise NoSlot(self.name, self._next_at - time.time())
            ok, wait = self._try(tokens)
            now = time.time()
            if ok and self.rps > 0:  # pacing: this process sends at least 1/rps apart
                with self._lock:
                    send_at = max(now, self._next_at)
                    if send_at < end:
                        self._next_at = send_at + 1.0 / max(1.0, self.rps * self._factor)
                if send_at >= end:
                    self.refusals += 1
                    raise NoSlot(self.name, send_at - now)
                if send_at > now:
                    time.sleep(send_at - now)
                    now = time.time()
            if ok:
                waited = now - began
                if waited > 0.0005:
                    self.waits += 1
                    self.waited_s += waited
                return waited
            if now + wait >= end:
                self.refusals += 1
                raise NoSlot(self.name, wait)
            time.sleep(wait + random.uniform(0, WAKE_JITTER_S))

    # ------------------------------------------------------------------ adapting

    def provider_limited(self) -> None:
        """A 429 from the provider: ask for less."""
        with self._lock:
            now = time.monotonic()
            if now - self._changed >= 1.0 and self._factor > MIN_FACTOR:
                self._factor = max(MIN_FACTOR, self._factor / 2)
                self._changed = now
                log.warning("llm limiter %s: provider 429: limit now %.0f%% of the configured",
                            self.name, self._factor * 100)

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


def limiter_for(name: str, rps: int, tpm: int, redis_url: str = "",
                key_prefix: str = "memesys", processes: int = 1) -> Limiter:
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
