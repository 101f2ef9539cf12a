"""Rate limits per provider and model, shared by every process through Redis.

``rate_limit_rps`` requests a second and ``rate_limit_tpm`` (estimated) tokens a minute,
counted across every process and host on one Redis. 0 turns a limit off.

- Requests/s: one shared schedule (GCRA, the generic cell rate algorithm, as a virtual
  schedule): Redis holds the theoretical time of the next request, and every caller takes the
  next send time and moves it on by ``1 / rate`` in one atomic script on Redis's clock. Up to
  ``MAX_BURST`` calls (a judging group; never more than half a second's worth, at least one)
  may go at once, but only from what the window left: the same script keeps the send times
  of the last ``rate`` requests and puts a send no earlier than the rate-th latest one plus
  ``WINDOW_S`` (a second and a margin), so no second ever holds more than the rate and a
  provider enforcing it never answers 429 (with the burst of 4 alone a second held 1.4 R).
  Then, at the moment of sending, the call is policed by the same algorithm on keys of its
  own that grant only "now": a process that stalled past several send times (starved of CPU,
  paused) sends them at the rate instead of all at once when it runs again.
  Before, a moving window of slots (the ``limits`` library's) counted the moment a slot was
  granted: it let R calls go in a few milliseconds and R more a second later, and a process
  that paced its sends after taking slots sent them up to a second late, so the provider saw
  up to 2 R in one second (tests/test_llm_limiter.py measured 38-42 at R = 20).
- A meme's calls are booked at its start (:meth:`Limiter.book`, the provider scheduler's
  admission, :mod:`memesys.pipeline.admission`): one script takes its next ``calls`` send
  times at once (the same rules: spacing, burst, window, the provider's wait), or none when the
  first would wait longer than the backlog it may queue behind or the last would not come
  within its deadline; then it is refused before any call, with
  a Retry-After when it would fit, never sooner than the provider's wait, and after those
  already told to come back (a "promised" time moved on by each refusal's calls), so refused
  clients return one by one instead of all at once. A booked call (``acquire``'s
  ``reserved_at``) sleeps until its time and takes no other: it is never refused for rate
  (the send cap still polices the moment it goes, up to its deadline).
- Two lanes: a background meme's (a task's) calls are booked on a lane of their own, planned
  after the schedule's next time and every task planned before them, holding no send time;
  each takes a free one only within ``BACKGROUND_LEAD_S`` of it when its planned time has
  come, so people's memes booked after a task's still go first, and tasks use what is left.
- Tokens/min: the ``limits`` library's moving window (an atomic Lua script over a Redis list
  of timestamps), tested before the request's send time is taken and charged after.
- Waiting counts against the request's deadline: a call whose send time (or the moment a
  full token window frees) is past its deadline fails at once (``llm_rate_limited``) with that
  wait as Retry-After, and takes no send time.
- Redis unreachable: each process falls back to its share of the limit (limit / processes,
  at least 1 a second) on a schedule and window of its own, logs it, counts it
  (``fallbacks``), and tries Redis again after ``RETRY_REDIS_S``.
- Provider 429s adapt the whole cluster: the rate asked for is the configured one times a
  factor in Redis that the schedule's script reads. A 429 halves it (at most once every
  ``LOWER_EVERY_S``, to no less than ``MIN_FACTOR``) and holds every process's sends to that
  provider+model until the provider's Retry-After (``retry-after-ms``, ``Retry-After`` or a
  spent ``x-ratelimit-*`` limit's reset) has passed; answers climb it back by ``CLIMB`` every
  ``CLIMB_EVERY_S`` without a 429. Redis unreachable: the same on this process's own factor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections import deque
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
LOWER_EVERY_S = 1.0
# Calls that may go at once: a meme's judging group (three verifiers and the scorer), never
# more than half a second's worth, at least one, and only from what the last second left.
MAX_BURST = JUDGING_CALLS_PER_MEME
# The window no more than the rate's requests may go in: a second, plus a margin for the
# moments between taking a send time and the request reaching the provider (a late earlier
# send must not put two sends a second apart at the provider into one of its windows). 50 ms:
# a meme's booked judging calls, sent after select_write answers, reach the send cap together
# and are granted at a window's very edge, so a thread's delay in sending shows (25 ms let 21-22
# of R = 20 into one second at the fake in test_the_daemon_and_another_process_share_one_limit).
WINDOW_S = 1.05
ADAPTED_TTL_MS = 600_000  # the shared factor is forgotten 10 min after its last change
WAKE_JITTER_S = 0.003  # spreads the callers waiting for the same token window
# A task's call takes a send time only this close to it (else it sleeps and asks again), so the
# schedule ahead of a person's meme never holds more of the tasks' calls than that.
BACKGROUND_LEAD_S = 0.1
INITIAL_LATENCY_S = 1.0  # a call's expected time at the provider before its first answer
LATENCY_WEIGHT = 0.2  # of each answer's time in the moving average

# The schedule. KEYS: the time the next request may go at the latest spacing (the GCRA's
# theoretical arrival time, seconds on Redis's clock), the send times of the last second's
# worth of requests (newest first), the shared adaptation (a hash: factor, until, ...), and for
# a task's call the background lane's next time (_BOOK's KEYS[5]: a task's call that goes late
# moves the lane's later bookings with it).
# ARGV: the configured requests/s, the most calls at once, the caller's longest wait (s), the
# window. The send time is the latest of: now, the GCRA's (tat less the burst tolerance), the
# last send (times never go back), the provider's Retry-After (until), and the rate-th latest
# send + the window (no window ever holds more than the rate). Answers {1, wait, factor} (the
# caller's send time is now + wait, and the schedule moved on) or {0, wait, factor} (not before
# its deadline: nothing taken).
_SCHEDULE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rps, max_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local adapted = redis.call('HMGET', KEYS[3], 'factor', 'until')
local factor = tonumber(adapted[1]) or 1
local rate = math.max(1, rps * factor)
local interval = 1 / rate
local limit = math.max(1, math.floor(rate))
local burst = math.max(1, math.min(max_burst, math.floor(rate / 2)))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local at = math.max(now, tat - (burst - 1) * interval, tonumber(adapted[2]) or 0)
local last = redis.call('LINDEX', KEYS[2], 0)
if last then at = math.max(at, tonumber(last)) end
local oldest = redis.call('LINDEX', KEYS[2], limit - 1)
if oldest then at = math.max(at, tonumber(oldest) + window) end
local f = string.format('%.6f', factor)
if at - now > max_wait then return {0, string.format('%.6f', at - now), f} end
tat = math.max(tat, at) + interval
local ttl_ms = math.ceil((tat - now + window) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', ttl_ms)
redis.call('LPUSH', KEYS[2], string.format('%.6f', at))
redis.call('LTRIM', KEYS[2], 0, limit - 1)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
if KEYS[4] and at + interval > tonumber(redis.call('GET', KEYS[4]) or '0') then
  redis.call('SET', KEYS[4], string.format('%.6f', at + interval), 'PX', ttl_ms)
end
return {1, string.format('%.6f', at - now), f}
"""

# A meme's booking. KEYS: the schedule's three, the time until which refused memes were
# told to wait (their promised returns), the background lane's next time. ARGV: the configured
# requests/s, the most calls at once, the meme's longest wait for its last call (s: its
# deadline's), the window, the calls to book, 1 for a background meme (a task: it is promised
# no return, it just tries again later), the longest wait for its first call (the backlog it
# may queue behind).
# An interactive meme's send times are the schedule's next ``calls`` ones, by _SCHEDULE's
# rules, taken. A background meme's are planned on a lane of their own: from the schedule's
# next time or the lane's, whichever is later, one interval apart; only the lane moves on, so
# they hold no send time a person's meme could have (each call takes a free one when its time
# comes: Limiter.acquire). Answers
# {1, 0, factor, wait...} (each booked call's send time is now + its wait) or
# {0, retry_after, factor} (nothing taken: its first or last call would wait longer than the
# meme may; retry_after: when it would fit, never before the provider's wait has passed nor,
# for a promised return, before the memes refused before it: at most one backlog's worth of
# them, so clients that retry at once without honouring it cannot push everyone's return back
# without end).
_BOOK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rps, max_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local calls, background, max_queue = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local adapted = redis.call('HMGET', KEYS[3], 'factor', 'until')
local factor = tonumber(adapted[1]) or 1
local held = tonumber(adapted[2]) or 0
local rate = math.max(1, rps * factor)
local interval = 1 / rate
local limit = math.max(1, math.floor(rate))
local burst = math.max(1, math.min(max_burst, math.floor(rate / 2)))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local times = {}
for i = 1, calls do
  local at = math.max(now, tat - (burst - 1) * interval, held)
  local newest = times[i - 1] or tonumber(redis.call('LINDEX', KEYS[2], 0) or '0')
  at = math.max(at, newest)
  local oldest
  if i - 1 >= limit then oldest = times[i - limit] else
    oldest = tonumber(redis.call('LINDEX', KEYS[2], limit - i) or '')
  end
  if oldest then at = math.max(at, oldest + window) end
  tat = math.max(tat, at) + interval
  times[i] = at
  if background == 1 then break end
end
if background == 1 then
  local lane = math.max(times[1], tonumber(redis.call('GET', KEYS[5]) or '0'))
  for i = 1, calls do times[i] = lane + (i - 1) * interval end
end
local f = string.format('%.6f', factor)
local first, last = times[1] - now, times[calls] - now
if first > max_queue or last > max_wait then
  local retry = math.max(first - max_queue, last - max_wait, held - now)
  if background == 0 then
    local promised = tonumber(redis.call('GET', KEYS[4]) or '0')
    retry = math.max(retry, math.min(promised - now, retry + math.max(0, max_queue)))
    local back = retry + calls * interval
    if now + back > promised then
      local ttl = math.ceil(back * 1000) + 1000
      redis.call('SET', KEYS[4], string.format('%.6f', now + back), 'PX', ttl)
    end
  end
  return {0, string.format('%.6f', retry), f}
end
local answer = {1, '0', f}
for i = 1, calls do answer[i + 3] = string.format('%.6f', times[i] - now) end
if background == 1 then
  local after = times[calls] + interval
  local lane_ms = math.ceil((after - now) * 1000) + 1000
  redis.call('SET', KEYS[5], string.format('%.6f', after), 'PX', lane_ms)
  return answer
end
local ttl_ms = math.ceil((tat - now + window) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', ttl_ms)
for i = 1, calls do redis.call('LPUSH', KEYS[2], string.format('%.6f', times[i])) end
redis.call('LTRIM', KEYS[2], 0, limit - 1)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return answer
"""

# The shared adaptation. KEYS[1]: its hash. ARGV: "lower" (a 429: halve the factor at most
# once every LOWER_EVERY_S, not below MIN_FACTOR, and hold every send until now + the
# provider's Retry-After) or "climb" (an answer: up by CLIMB once CLIMB_EVERY_S have passed
# since the last change and the last 429), then the Retry-After and those figures. The hash:
# factor, changed and limited (the last change and the last 429), until (seconds, Redis's
# clock). Answers {the factor now, 1 if this call changed it}.
_ADAPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stamp = string.format('%.6f', now)
local how, retry_after = ARGV[1], tonumber(ARGV[2])
local min_factor, climb = tonumber(ARGV[3]), tonumber(ARGV[4])
local lower_every, climb_every, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local adapted = redis.call('HMGET', KEYS[1], 'factor', 'changed', 'until', 'limited')
local factor = tonumber(adapted[1]) or 1
local changed = tonumber(adapted[2]) or 0
local quiet = math.min(now - changed, now - (tonumber(adapted[4]) or 0))
local moved = 0
if how == 'lower' then
  redis.call('HSET', KEYS[1], 'limited', stamp)
  if now - changed >= lower_every and factor > min_factor then
    factor = math.max(min_factor, factor / 2)
    moved = 1
    redis.call('HSET', KEYS[1], 'factor', string.format('%.6f', factor), 'changed', stamp)
  end
  if retry_after > 0 and now + retry_after > (tonumber(adapted[3]) or 0) then
    redis.call('HSET', KEYS[1], 'until', string.format('%.6f', now + retry_after))
  end
  redis.call('PEXPIRE', KEYS[1], math.max(ttl, math.ceil(retry_after * 1000) + 1000))
elseif factor < 1 and quiet >= climb_every then
  factor = math.min(1, factor + climb)
  moved = 1
  redis.call('HSET', KEYS[1], 'factor', string.format('%.6f', factor), 'changed', stamp)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {string.format('%.6f', factor), moved}
"""


class _Adapted:
    """The adaptation in this process (Redis unreachable, or none configured): the factor of
    the configured rate asked for now, when it last changed, the last 429, and no send before
    ``until`` (monotonic clock)."""

    def __init__(self) -> None:
        self.factor = 1.0
        self.changed = self.limited = float("-inf")
        self.until = 0.0
        self.lock = threading.Lock()

    def lower(self, retry_after: float) -> tuple[float, bool]:
        with self.lock:
            now = time.monotonic()
            self.limited = now
            self.until = max(self.until, now + retry_after)
            if now - self.changed < LOWER_EVERY_S or self.factor <= MIN_FACTOR:
                return self.factor, False
            self.factor = max(MIN_FACTOR, self.factor / 2)
            self.changed = now
            return self.factor, True

    def climb(self) -> tuple[float, bool]:
        with self.lock:
            now = time.monotonic()
            quiet = now - max(self.changed, self.limited)
            if self.factor >= 1.0 or quiet < CLIMB_EVERY_S:
                return self.factor, False
            self.factor = min(1.0, self.factor + CLIMB)
            self.changed = now
            return self.factor, True


def _interval(rps: float, adapted: _Adapted) -> float:
    return 1.0 / max(1.0, rps * adapted.factor)


class _LocalSchedule:
    """The same schedule in this process (Redis unreachable, or none configured), with its
    background lane."""

    def __init__(self) -> None:
        self._tat = 0.0
        self._sent: deque[float] = deque()  # the last second's worth of send times, oldest first
        self._lane = 0.0  # the background lane's next time
        self._lock = threading.Lock()

    def __call__(
        self, rps: float, adapted: _Adapted, max_wait: float, background: bool = False
    ) -> tuple[bool, float, float]:
        with self._lock:
            now = time.monotonic()
            at = self._next(now, rps, adapted, take=False)
            if at - now > max_wait:
                return False, at - now, adapted.factor
            self._next(now, rps, adapted, take=True)
            if background:
                self._lane = max(self._lane, at + _interval(rps, adapted))
            return True, at - now, adapted.factor

    def book(
        self,
        rps: float,
        adapted: _Adapted,
        max_wait: float,
        max_queue: float,
        calls: int,
        background: bool,
    ) -> tuple[bool, float, list[float]]:
        """The next ``calls`` send times (_BOOK's rules, without its promised returns):
        (True, 0, their waits) or (False, the wait past ``max_queue`` or ``max_wait``, [])
        taking nothing."""
        with self._lock:
            now = time.monotonic()
            if background:
                interval = _interval(rps, adapted)
                lane = max(self._next(now, rps, adapted, take=False), self._lane)
                waits = [lane + i * interval - now for i in range(calls)]
            else:
                kept = self._tat, deque(self._sent)
                waits = [self._next(now, rps, adapted, take=True) - now for _ in range(calls)]
            if waits[0] <= max_queue and waits[-1] <= max_wait:
                if background:
                    self._lane = now + waits[-1] + interval
                return True, 0.0, waits
            if not background:
                self._tat, self._sent = kept
            late = max(waits[0] - max_queue, waits[-1] - max_wait, adapted.until - now)
            return False, late, []

    def _next(self, now: float, rps: float, adapted: _Adapted, take: bool) -> float:
        """The next send time (monotonic clock); ``take``: the schedule moves on past it."""
        rate = max(1.0, rps * adapted.factor)
        interval, limit = _interval(rps, adapted), max(1, int(rate))
        burst = max(1, min(MAX_BURST, int(rate / 2)))
        tat = max(self._tat, now)
        at = max(now, tat - (burst - 1) * interval, adapted.until)
        while len(self._sent) > limit:
            self._sent.popleft()
        if self._sent:
            at = max(at, self._sent[-1])
            if len(self._sent) == limit:
                at = max(at, self._sent[0] + WINDOW_S)
        if take:
            self._tat = max(tat, at) + interval
            self._sent.append(at)
            if len(self._sent) > limit:
                self._sent.popleft()
        return at


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
        self._adapted_key = f"{self._namespace}/{name}/adapted"
        self._lane_key = f"{self._schedule_key}/background"
        # _SCHEDULE, run on the schedule's keys and on the send cap's; _ADAPT
        self._gcra: Script | None = None
        self._book: Script | None = None
        self._adapt: Script | None = None
        self._shared_window: MovingWindowRateLimiter | None = None
        if redis_url:
            client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._gcra = client.register_script(_SCHEDULE)
            self._book = client.register_script(_BOOK)
            self._adapt = client.register_script(_ADAPT)
            self._shared_window = MovingWindowRateLimiter(
                storage_from_string(
                    _storage_uri(redis_url), socket_timeout=0.5, socket_connect_timeout=0.5
                )
            )
        self._local_schedule = _LocalSchedule()
        self._local_cap = _LocalSchedule()
        self._local_window = MovingWindowRateLimiter(MemoryStorage())
        self._local_adapted = _Adapted()
        self._lock = threading.Lock()
        self._factor = 1.0  # the shared factor as this process last read it
        self._local_until = 0.0  # monotonic: Redis is skipped until then
        # counters (metrics)
        self.waits = 0
        self.waited_s = 0.0
        self.refusals = 0
        self.fallbacks = 0
        # A call's expected time at the provider (s): what a booked meme must leave after its
        # last send time (Limiter.book's callers); each answer moves it (a moving average).
        self.latency_s = INITIAL_LATENCY_S

    @property
    def enabled(self) -> bool:
        return self.rps > 0 or self.tpm > 0

    @property
    def factor(self) -> float:
        return self._factor

    async def acquire(
        self,
        tokens: int,
        deadline: float | None,
        max_wait_s: float,
        reserved_at: float | None = None,
        background: bool = False,
    ) -> float:
        """Take a send time for a request of ``tokens`` estimated tokens and wait for it, then
        a place in the send cap, at most until ``deadline`` (wall clock; None: ``max_wait_s``);
        the seconds waited. NoSlot at once when the send time, or the moment a full window
        frees, is past it. ``reserved_at``: the send time (wall clock) :meth:`book` took for
        this call: it is waited for instead of taking one. A ``background`` (task's) call
        takes a send time only within ``BACKGROUND_LEAD_S`` (after its planned one, if any),
        sleeping until one is that close: people's calls booked meanwhile go first, and it is
        refused only at its deadline. The waits are the event loop's sleeps; the Redis round
        trips between them (a script each, well under a millisecond on a local Redis) run on
        the loop."""
        if not self.enabled:
            return 0.0
        began = time.time()
        end = deadline if deadline is not None else began + max_wait_s
        if reserved_at is not None and self.rps > 0:
            await asyncio.sleep(max(0.0, min(reserved_at, end) - began))
        scheduled = reserved_at is None or self.rps <= 0 or background
        if self.tpm > 0 or scheduled:
            step = functools.partial(self._reserve, tokens, scheduled, background)
            await self._take(step, end, BACKGROUND_LEAD_S if background else 0.0)
        if self.rps > 0:
            await self._take(self._cap, end)
        waited = time.time() - began
        if waited > 0.0005:
            self.waits += 1
            self.waited_s += waited
        return waited

    async def _take(
        self, step: Callable[[bool, float], tuple[bool, float]], end: float, lead: float = 0.0
    ) -> None:
        """Run ``step`` until it grants, sleeping the wait it names; NoSlot once that wait
        would end past ``end``. With a ``lead``, the step grants only within it (and never
        past ``end``), and the sleep ends that much before the wait."""
        while True:
            left = end - time.time()
            ok, wait = self._on_storage(step, min(lead, left) if lead > 0 else left)
            if ok:
                if wait > 0:
                    await asyncio.sleep(wait)
                return
            if time.time() + wait >= end:
                self.refusals += 1
                raise NoSlot(self.name, wait)
            await asyncio.sleep(max(0.0, wait - lead) + random.uniform(0, WAKE_JITTER_S))

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

    def _reserve(
        self, tokens: int, scheduled: bool, background: bool, local: bool, max_wait: float
    ) -> tuple[bool, float]:
        """The token window's test, the request's send time on the schedule (unless booked:
        not ``scheduled``; a ``background`` one moves the background lane), the tokens'
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
        if self.rps > 0 and scheduled:
            ok, wait = self._schedule(
                self._schedule_key, self._local_schedule, local, max(0.0, max_wait), background
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
        self,
        key: str,
        local_schedule: _LocalSchedule,
        local: bool,
        max_wait: float,
        background: bool = False,
    ) -> tuple[bool, float]:
        """The schedule under ``key`` in Redis (or ``local_schedule`` in this process, at its
        share of the rate) at the configured rate times the adaptation's factor: (granted, the
        wait before sending) or (False, the wait that would have been). A ``background``
        call's grant moves the background lane on past it."""
        if local or self._gcra is None:  # (no script: never anything but local)
            ok, wait, factor = local_schedule(
                self.rps / self.processes, self._local_adapted, max_wait, background
            )
        else:
            keys = [key, f"{key}/window", self._adapted_key]
            if background:
                keys.append(self._lane_key)
            answer = self._gcra(keys=keys, args=[self.rps, MAX_BURST, max_wait, WINDOW_S])
            ok, wait, factor = bool(answer[0]), float(answer[1]), float(answer[2])
        self._factor = factor
        return ok, wait

    def book(
        self,
        calls: int,
        max_wait: float,
        background: bool = False,
        max_queue: float | None = None,
    ) -> list[float]:
        """The send times (wall clock) of a meme's next ``calls`` calls, taken at once, the
        first within ``max_queue`` s (None: ``max_wait``), the last within ``max_wait`` s;
        NoSlot (nothing taken) with the wait before they would fit otherwise. An interactive
        meme's refused return is promised (_BOOK); a ``background`` meme's times are planned
        on the background lane, taken by none (each call takes a free one near it:
        :meth:`acquire`). Empty without a requests/s limit."""
        queue = max_wait if max_queue is None else max_queue
        if self.rps <= 0 or calls <= 0:
            return []
        booked: list[float] = []

        def step(local: bool, _max_wait: float) -> tuple[bool, float]:
            nonlocal booked
            began = time.time()
            if local or self._book is None:
                ok, retry, waits = self._local_schedule.book(
                    self.rps / self.processes,
                    self._local_adapted,
                    max_wait,
                    queue,
                    calls,
                    background,
                )
                self._factor = self._local_adapted.factor
            else:
                keys = [self._schedule_key, f"{self._schedule_key}/window", self._adapted_key]
                keys += [f"{self._schedule_key}/promised", self._lane_key]
                args = [self.rps, MAX_BURST, max_wait, WINDOW_S, calls, int(background), queue]
                answer = self._book(keys=keys, args=args)
                ok, retry, self._factor = bool(answer[0]), float(answer[1]), float(answer[2])
                waits = [float(wait) for wait in answer[3:]]
            booked = [began + wait for wait in waits]
            return ok, retry

        ok, retry = self._on_storage(step, max_wait)
        if not ok:
            self.refusals += 1
            raise NoSlot(self.name, retry)
        return booked

    def answered_in(self, seconds: float) -> None:
        """An attempt answered in ``seconds``: the expected latency moves towards it."""
        self.latency_s += LATENCY_WEIGHT * (seconds - self.latency_s)

    def _until_free(self, window: MovingWindowRateLimiter, item: object) -> float:
        stats = window.get_window_stats(item, *self._ids)  # type: ignore[arg-type]
        return max(0.001, stats.reset_time - time.time())

    # ------------------------------------------------------------------ adapting

    def provider_limited(self, retry_after: float | None = None) -> bool:
        """A 429 from the provider: every process asks for less (the factor halves, at most
        once every LOWER_EVERY_S, not below MIN_FACTOR) and none sends before the provider's
        ``retry_after`` has passed. Whether this one lowered the factor."""
        self._factor, lowered = self._adapted("lower", retry_after or 0.0)
        if not lowered:
            return False
        log.warning(
            "llm limiter %s: provider 429: limit now %.0f%% of the configured",
            self.name,
            self._factor * 100,
        )
        return True

    def provider_answered(self) -> None:
        """An answer: climb back towards the configured limit, one step per CLIMB_EVERY_S
        (only while the factor this process last read is below 1: no Redis call otherwise)."""
        if self._factor < 1.0:
            self._factor = self._adapted("climb", 0.0)[0]

    def _adapted(self, how: str, retry_after: float) -> tuple[float, bool]:
        """The shared adaptation lowered or climbed (``how``): its factor now, and whether
        this call moved it. On this process's own while Redis is unreachable."""
        moved = False

        def step(local: bool, _max_wait: float) -> tuple[bool, float]:
            nonlocal moved
            if local or self._adapt is None:
                adapted = self._local_adapted
                factor, moved = adapted.lower(retry_after) if how == "lower" else adapted.climb()
                return True, factor
            args: list[str | float] = [how, retry_after, MIN_FACTOR, CLIMB]
            args += [LOWER_EVERY_S, CLIMB_EVERY_S, ADAPTED_TTL_MS]
            factor_text, changed = self._adapt(keys=[self._adapted_key], args=args)
            moved = bool(changed)
            return True, float(factor_text)

        factor = self._on_storage(step, 0.0)[1]
        return factor, moved


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
