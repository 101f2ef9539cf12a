"""When to hedge a call: the policy, per model, of sending one more copy of a call that runs
past a high quantile of its stage's latency (Dean and Barroso, "The Tail at Scale").

- **When**: an attempt still unanswered after the ``quantile`` (``[llm] hedge_quantile``) of
  the latencies observed for the same stage (the last ``SAMPLES_KEPT`` answers of every
  process, pooled through Redis by :mod:`memesys.llm.hedge_pool`, so a worker that just started
  knows the provider's tail), or of the model's answers over every stage while the stage has
  fewer than ``MIN_SAMPLES``; no hedging before the model has that many, and none while that
  quantile is under ``TAIL_RATIO`` times the median (``FEW_TAIL_RATIO`` while the answers are
  fewer than ``WELL_SAMPLED``: a small sample of a heavy tail often looks light): a provider
  without a heavy tail (every
  answer near its median) gains nothing from a second copy, which would only spend its rate
  limit (measured: at a fixed 100 ms, hedging the slowest 15 % took send times a person's meme
  then waited for).
- **The straggler**: in a :class:`Fanout` (the judging group: the meme waits for the slowest of
  its calls), the one call still running once every other has ended is hedged after the
  sooner ``straggler_quantile`` (``[llm] hedge_straggler_quantile``; at once if it has run
  longer): only that call still stands between the meme and its next step, so a hedge there
  buys the most time per extra call. A call that slower ones of its fan-out outlast gains the
  meme nothing from a hedge: before it is the straggler it is hedged only past
  ``FANOUT_FACTOR`` times its hedging point (several calls stuck at once).
- **How many**: at most ``budget`` (``[llm] hedge_budget``, default 0.15) hedges per call made,
  over time: each call earns ``budget`` of a hedge, a hedge spends one, and only a few can be
  saved up, so a calm hour cannot buy a burst. The credit is the cluster's (pooled in Redis: a
  process whose calls need more hedges uses what another's leave); while Redis is away each
  process keeps its own, at most ``MAX_CREDIT``.
- **Where the transport draws the line** (:mod:`memesys.llm.transport`): only while the breaker
  is closed, only with a send time free in the shared schedule at once (a hedge never causes a
  429 or queues behind a meme's booked calls), only when the time left before the deadline
  exceeds the stage's median latency; the first answer wins and the other is cancelled.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

SAMPLES_KEPT = 200
MIN_SAMPLES = 10  # a daemon new to its provider hedges from its third meme on (five calls each)
MAX_CREDIT = 3.0
TAIL_RATIO = 2.0  # hedge only when the hedging point is at least this many medians
# ... of a stage with this many answers; with fewer, at least FEW_TAIL_RATIO medians: a heavy
# tail (the lognormal of docs/llm.md: its 0.85 point is 3 medians) looks light in 10 to 20
# answers one time in five against 2, one in 30 to 90 against 1.5 (simulated, 20,000 samples
# of 10, 15 and 20 answers), while answers that all come near
# their median (a ratio near 1) stay unhedged either way
WELL_SAMPLED = 50
FEW_TAIL_RATIO = 1.5
FANOUT_FACTOR = 2.0  # a fan-out's call not (yet) its straggler: hedged past this x its point
_EVERY = 8  # quantiles are recomputed after this many new answers
SHARE_EVERY_S = 1.0  # answers are pooled with the other processes' at most this often

R = TypeVar("R")


class Pool(Protocol):
    """What the processes share (:class:`memesys.llm.hedge_pool.HedgePool`); None from either
    method: Redis is unreachable, the process keeps to its own."""

    def exchange(
        self, fresh: Mapping[str, list[float]], stages: list[str], earned: float
    ) -> dict[str, list[float]] | None:
        """This process's new answers by stage and earned credit in, every process's kept
        answers of ``stages`` out."""

    def spend(self) -> bool | None:
        """One hedge from the shared budget: whether one was left."""


@dataclass
class _Latencies:
    """The last answers' latencies of one stage (or of every stage: key "") and their
    quantiles as last computed."""

    kept: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    fresh: int = 0
    hedge_after: float | None = None
    straggler_after: float | None = None
    median: float | None = None

    def add(self, seconds: float, quantiles: tuple[float, float]) -> None:
        self.kept.append(seconds)
        self.fresh += 1
        if self.hedge_after is None or self.fresh >= _EVERY:
            self.recompute(quantiles)

    def replace(self, pooled: list[float], quantiles: tuple[float, float]) -> None:
        self.kept = deque(pooled[-SAMPLES_KEPT:], maxlen=SAMPLES_KEPT)
        self.recompute(quantiles)

    def recompute(self, quantiles: tuple[float, float]) -> None:
        if len(self.kept) < MIN_SAMPLES:
            return
        ordered = sorted(self.kept)
        self.hedge_after = _at(ordered, quantiles[0])
        self.straggler_after = _at(ordered, quantiles[1])
        self.median = _at(ordered, 0.5)
        self.fresh = 0


def _at(ordered: list[float], quantile: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


@dataclass(frozen=True)
class Point:
    """When to hedge an attempt: ``after`` seconds, or ``straggler_after`` once it is its
    fan-out's straggler; ``median``: the stage's median latency."""

    after: float
    straggler_after: float
    median: float

    def at(self, straggler: asyncio.Event | None) -> float:
        """Seconds after its send to hedge an attempt, by its fan-out's ``straggler`` event
        (:func:`straggling`): of a call in no fan-out (None), of a fan-out's call not yet its
        straggler (unset), of the straggler (set)."""
        if straggler is None:
            return self.after
        return self.straggler_after if straggler.is_set() else FANOUT_FACTOR * self.after

    def soonest(self, straggler: asyncio.Event | None) -> float:
        """The soonest :meth:`at` can come: a fan-out's call is hedged soonest as its
        straggler (the straggler quantile is at most the hedging one)."""
        return self.after if straggler is None else self.straggler_after


class Hedging:
    """One model's hedging in this process; ``pool`` shares the answers' latencies and the
    budget with the other processes (None: this process's own only)."""

    def __init__(
        self,
        quantile: float,
        budget: float,
        straggler_quantile: float | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.quantile = quantile
        self.straggler_quantile = quantile if straggler_quantile is None else straggler_quantile
        self.budget = budget
        self.credit = 0.0  # this process's own, spent while the pool is unreachable
        self._latencies: dict[str, _Latencies] = {}
        self._pool = pool
        self._unshared: dict[str, list[float]] = {}
        self._earned = 0.0  # credit earned since the last exchange, for the pool
        self._shared_at = float("-inf")  # monotonic time of the last exchange

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and 0 < self.quantile < 1

    @property
    def _quantiles(self) -> tuple[float, float]:
        return self.quantile, min(self.quantile, self.straggler_quantile)

    def answered(self, stage: str, seconds: float) -> None:
        """An attempt of ``stage`` answered in ``seconds``."""
        for key in {stage, ""}:
            self._latencies.setdefault(key, _Latencies()).add(seconds, self._quantiles)
        if self._pool is not None:
            self._unshared.setdefault(stage, []).append(seconds)
            self._share(stage)

    def _share(self, stage: str) -> None:
        """At most every SHARE_EVERY_S: this process's new answers and earned credit to the
        pool, and the pool's answers of ``stage``, of every stage and of the stages seen here
        in place of its own."""
        now = time.monotonic()
        if self._pool is None or now - self._shared_at < SHARE_EVERY_S:
            return
        self._shared_at = now
        fresh, self._unshared = self._unshared, {}
        earned, self._earned = self._earned, 0.0
        pooled = self._pool.exchange(fresh, sorted({stage, "", *self._latencies}), earned)
        if pooled is None:  # unreachable: the answers stay this process's own
            return
        for key, values in pooled.items():
            if values:
                self._latencies.setdefault(key, _Latencies()).replace(values, self._quantiles)

    def called(self) -> None:
        """A call was made: it earns ``budget`` of a hedge (the pool's, and this process's own
        for while the pool is unreachable)."""
        self.credit = min(MAX_CREDIT, self.credit + self.budget)
        if self._pool is not None:
            self._earned += self.budget

    def after(self, stage: str) -> Point | None:
        """When to hedge an attempt of ``stage``, or None when hedging is off, too few answers
        were seen or their tail is not heavy."""
        if not self.enabled:
            return None
        self._share(stage)
        for key in (stage, ""):
            seen = self._latencies.get(key)
            if (
                seen is not None
                and seen.hedge_after is not None
                and seen.straggler_after is not None
                and seen.median is not None
            ):
                ratio = TAIL_RATIO if len(seen.kept) >= WELL_SAMPLED else FEW_TAIL_RATIO
                if seen.hedge_after < ratio * seen.median:
                    return None
                return Point(seen.hedge_after, seen.straggler_after, seen.median)
        return None

    def spend(self) -> bool:
        """Take one hedge from the budget (the pool's; this process's own while the pool is
        unreachable): False when none is left."""
        taken = None if self._pool is None else self._pool.spend()
        if taken is not None:
            return taken
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True

    def refund(self) -> None:
        """A hedge taken from the budget was not sent: it goes back to the pool with the next
        exchange (this process's own credit without a pool)."""
        if self._pool is not None:
            self._earned += 1.0
        else:
            self.credit = min(MAX_CREDIT, self.credit + 1.0)


_straggling: ContextVar[asyncio.Event | None] = ContextVar("memesys_hedge_straggler", default=None)


def straggling() -> asyncio.Event | None:
    """The event set once the call running in this task is its fan-out's straggler (None: the
    call is in no fan-out)."""
    return _straggling.get()


class Fanout:
    """Calls awaited together whose caller waits for the slowest (the judging group): once all
    but one have ended, that one is the straggler (:func:`straggling`), hedged after the
    straggler quantile. Members are counted when :meth:`member` is called, before any runs."""

    def __init__(self) -> None:
        self._running: list[asyncio.Event] = []

    def member(self, call: Awaitable[R]) -> Awaitable[R]:
        event = asyncio.Event()
        self._running.append(event)
        return self._run(call, event)

    async def _run(self, call: Awaitable[R], event: asyncio.Event) -> R:
        token = _straggling.set(event)
        try:
            return await call
        finally:
            _straggling.reset(token)
            self._running.remove(event)
            if len(self._running) == 1:
                self._running[0].set()
