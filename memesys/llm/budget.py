"""Token accounting and the daily token budget, shared by every process through Redis.

Each answered call adds its tokens to ``<key_prefix>:llm:tokens:<YYYY-MM-DD>`` (UTC; INCRBY,
kept 2 days) and its estimated cost to ``<key_prefix>:llm:cost:<YYYY-MM-DD>`` (INCRBYFLOAT),
with per-model fields in the hash ``<key_prefix>:llm:usage:<YYYY-MM-DD>``. With
``[llm] daily_token_budget`` > 0, a call is refused before it is sent once the day's tokens
reach it: ``budget_exhausted`` with Retry-After = seconds until midnight UTC. A call in flight
when the budget is reached finishes (the budget may be overshot by the calls in flight).

Without a budget the counts are accounting only: a process adds them to Redis at most once a
second (``FLUSH_EVERY_S``, on its next answered call, like the metrics), not on every call,
which would cost each stage call a Redis round trip; with a budget every call's tokens are
written at once, so every process refuses as soon as the day's budget is spent.

Prices (``[llm] prices``): ``"model=in:out,model=in:out"``, US dollars per 1000 input
(prompt) and output (completion) tokens, e.g. ``"gpt-4o-mini=0.00015:0.0006"``; a model
without a price costs 0.

Redis unreachable: the budget is still enforced, on an estimate. Each process counts what
Redis said at its last read plus its own tokens since, once for each of the ``processes``
sharing the budget (as if every one spent as it does), so together they keep to what was
left; it logs the outage once and the day's total again when Redis answers. Counts that could
not be written are kept and added with the next write.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import redis

log = logging.getLogger("memesys.llm.budget")

KEEP_S = 2 * 86400
FLUSH_EVERY_S = 1.0


class BudgetSpent(Exception):
    def __init__(self, used: int, budget: int, retry_after: float) -> None:
        super().__init__(f"the daily token budget is spent ({used} of {budget} tokens)")
        self.retry_after = retry_after


def parse_prices(text: str) -> dict[str, tuple[float, float]]:
    """``"m1=0.5:1.5, m2=1:2"`` -> {"m1": (0.5, 1.5), ...}; ValueError naming the bad entry."""
    prices: dict[str, tuple[float, float]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        model, sep, pair = entry.partition("=")
        given, colon, taken = pair.partition(":")
        try:
            if not (sep and colon and model.strip()):
                raise ValueError
            prices[model.strip()] = (float(given), float(taken))
        except ValueError:
            raise ValueError(f"a price is model=in_per_1k:out_per_1k, not {entry!r}") from None
    return prices


def until_midnight_utc(now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


def day(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


class Budget:
    def __init__(
        self,
        daily_tokens: int,
        prices: dict[str, tuple[float, float]],
        redis_url: str = "",
        key_prefix: str = "memesys",
        processes: int = 1,
    ) -> None:
        self.daily_tokens = daily_tokens
        self.processes = max(1, processes)
        self.prices = prices
        self.prefix = f"{key_prefix}:llm"
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            if redis_url
            else None
        )
        self._lock = threading.Lock()
        self.local_tokens: dict[str, int] = {}  # this process, by day
        self.tokens = 0
        self.cost = 0.0
        self._pending: dict[tuple[str, str], list[float]] = {}  # (day, model): [tokens, cost]
        self._flushed = time.monotonic()
        # at the last read of Redis: (day, the day's tokens there, this process's tokens then)
        self._seen: tuple[str, int, int] = ("", 0, 0)
        self._redis_down = False

    def cost_of(self, model: str, prompt: int, completion: int) -> float:
        given, taken = self.prices.get(model, (0.0, 0.0))
        return prompt / 1000 * given + completion / 1000 * taken

    def used_today(self) -> int:
        today = day()
        if self._redis is None:
            return self.local_tokens.get(today, 0)
        try:
            used = int(self._redis.get(f"{self.prefix}:tokens:{today}") or 0)
        except redis.RedisError as exc:
            return self._estimate(today, exc)
        with self._lock:
            self._seen = (today, used, self.local_tokens.get(today, 0))
            if self._redis_down:
                self._redis_down = False
                log.warning("llm budget: Redis answers again: %d tokens used today", used)
        return used

    def _estimate(self, today: str, exc: Exception) -> int:
        """Today's tokens while Redis is unreachable: those it reported last, plus this
        process's since, counted once per process sharing the budget."""
        with self._lock:
            seen_day, seen_used, seen_mine = self._seen
            if seen_day != today:  # nothing read today: count from 0
                seen_used, seen_mine = 0, 0
            estimate = seen_used + (self.local_tokens.get(today, 0) - seen_mine) * self.processes
            if not self._redis_down:
                self._redis_down = True
                log.warning(
                    "llm budget: Redis unreachable (%s): enforcing the budget on an "
                    "estimate, %d tokens used today (this process's share: 1/%d of "
                    "what is left)",
                    exc,
                    estimate,
                    self.processes,
                )
        return estimate

    def check(self) -> None:
        """BudgetSpent once today's tokens reach the daily budget (0: none)."""
        if self.daily_tokens <= 0:
            return
        used = self.used_today()
        if used >= self.daily_tokens:
            raise BudgetSpent(used, self.daily_tokens, until_midnight_utc())

    def spend(self, model: str, prompt: int, completion: int) -> float:
        """Account an answered call; its estimated cost."""
        total = prompt + completion
        cost = self.cost_of(model, prompt, completion)
        today = day()
        with self._lock:
            self.tokens += total
            self.cost += cost
            self.local_tokens = {today: self.local_tokens.get(today, 0) + total}
            if self._redis is None or not total:
                return cost
            pending = self._pending.setdefault((today, model), [0, 0.0])
            pending[0] += total
            pending[1] += cost
            due = self.daily_tokens > 0 or time.monotonic() - self._flushed >= FLUSH_EVERY_S
        if due:
            self.flush()
        return cost

    def flush(self) -> None:
        """Add the counts not yet in Redis."""
        if self._redis is None:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed = time.monotonic()
        if not pending:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for (today, model), (total, cost) in pending.items():
                pipe.incrby(f"{self.prefix}:tokens:{today}", int(total))
                pipe.expire(f"{self.prefix}:tokens:{today}", KEEP_S)
                pipe.incrbyfloat(f"{self.prefix}:cost:{today}", cost)
                pipe.expire(f"{self.prefix}:cost:{today}", KEEP_S)
                pipe.hincrby(f"{self.prefix}:usage:{today}", f"{model}:tokens", int(total))
                pipe.hincrbyfloat(f"{self.prefix}:usage:{today}", f"{model}:cost", cost)
                pipe.expire(f"{self.prefix}:usage:{today}", KEEP_S)
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:  # kept for the next write
                for key, (total, cost) in pending.items():
                    kept = self._pending.setdefault(key, [0, 0.0])
                    kept[0] += total
                    kept[1] += cost
            log.warning(
                "llm budget: Redis unreachable (%s): %d tokens kept until it answers",
                exc,
                sum(int(total) for total, _ in pending.values()),
            )


_budgets: dict[tuple[str, str, int, str], Budget] = {}
_registry_lock = threading.Lock()


def budget_for(
    daily_tokens: int,
    prices: str,
    redis_url: str = "",
    key_prefix: str = "memesys",
    processes: int = 1,
) -> Budget:
    """The process's budget accounting (one per Redis and prefix); ``processes``: how many
    share the budget (each keeps to its share of what is left while Redis is unreachable)."""
    key = (redis_url, key_prefix, daily_tokens, prices)
    with _registry_lock:
        found = _budgets.get(key)
        if found is None:
            found = _budgets[key] = Budget(
                daily_tokens, parse_prices(prices), redis_url, key_prefix, processes
            )
        return found
