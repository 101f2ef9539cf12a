"""When to hedge a call: the policy, per process and model, of sending one more copy of a call
that runs past a high quantile of its stage's latency (Dean and Barroso, "The Tail at Scale").

- **When**: an attempt still unanswered after the ``quantile`` (``[llm] hedge_quantile``) of
  the latencies this process observed for the same stage (the last ``SAMPLES_KEPT`` answers),
  or of the model's answers over every stage while the stage has fewer than ``MIN_SAMPLES``;
  no hedging before the model has that many, and none while that quantile is under
  ``TAIL_RATIO`` times the median: a provider without a heavy tail (every answer near its
  median) gains nothing from a second copy, which would only spend its rate limit (measured:
  at a fixed 100 ms, hedging the slowest 15 % took send times a person's meme then waited for).
- **How many**: at most ``budget`` (``[llm] hedge_budget``, default 0.15) hedges per call made,
  over time: each call earns ``budget`` of a hedge, a hedge spends one, and at most
  ``MAX_CREDIT`` can be saved up, so a calm hour cannot buy a burst.
- **Where the transport draws the line** (:mod:`memesys.llm.transport`): only while the breaker
  is closed, only with a send time free in the shared schedule at once (a hedge never causes a
  429 or queues behind a meme's booked calls), only when the time left before the deadline
  exceeds the stage's median latency; the first answer wins and the other is cancelled.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

SAMPLES_KEPT = 200
MIN_SAMPLES = 20
MAX_CREDIT = 3.0
TAIL_RATIO = 2.0  # hedge only when the hedging point is at least this many medians
_EVERY = 8  # quantiles are recomputed after this many new answers


@dataclass
class _Latencies:
    """The last answers' latencies of one stage (or of every stage: key "") and their
    quantiles as last computed."""

    kept: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    fresh: int = 0
    hedge_after: float | None = None
    median: float | None = None

    def add(self, seconds: float, quantile: float) -> None:
        self.kept.append(seconds)
        self.fresh += 1
        if len(self.kept) >= MIN_SAMPLES and (self.hedge_after is None or self.fresh >= _EVERY):
            ordered = sorted(self.kept)
            self.hedge_after = _at(ordered, quantile)
            self.median = _at(ordered, 0.5)
            self.fresh = 0


def _at(ordered: list[float], quantile: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


class Hedging:
    """One model's hedging in this process."""

    def __init__(self, quantile: float, budget: float) -> None:
        self.quantile = quantile
        self.budget = budget
        self.credit = 0.0
        self._latencies: dict[str, _Latencies] = {}

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and 0 < self.quantile < 1

    def answered(self, stage: str, seconds: float) -> None:
        """An attempt of ``stage`` answered in ``seconds``."""
        for key in {stage, ""}:
            self._latencies.setdefault(key, _Latencies()).add(seconds, self.quantile)

    def called(self) -> None:
        """A call was made: it earns ``budget`` of a hedge."""
        self.credit = min(MAX_CREDIT, self.credit + self.budget)

    def after(self, stage: str) -> tuple[float, float] | None:
        """(seconds after which to hedge an attempt of ``stage``, its median latency), or None
        when hedging is off, too few answers were seen or their tail is not heavy."""
        if not self.enabled:
            return None
        for key in (stage, ""):
            seen = self._latencies.get(key)
            if seen is not None and seen.hedge_after is not None and seen.median is not None:
                if seen.hedge_after < TAIL_RATIO * seen.median:
                    return None
                return seen.hedge_after, seen.median
        return None

    def spend(self) -> bool:
        """Take one hedge from the budget: False when none is left."""
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True

    def refund(self) -> None:
        """A hedge taken from the budget was not sent."""
        self.credit = min(MAX_CREDIT, self.credit + 1.0)
