"""The one dispatch rule for a pool's workers, shared by the pool and by a directory.

A request sent through a :class:`~actors.pool.Pool` and one a
:class:`~actors.bridge.Directory` sends straight to a worker are placed the same way
(:func:`pick`):

1. only accepting workers holding fewer than ``max_outstanding`` requests can take it; if
   none can, the request is refused ``overloaded`` rather than queued without end;
2. among those, a worker whose oldest held request is *overdue* (older than ``overdue_s``:
   it may be frozen, hung, or stuck in a long handler) is passed over while another can take
   the request; if every one is overdue, the rule falls back to all of them;
3. the least loaded of the remaining workers gets it (the first of equals).

Each dispatcher judges by its own books: the requests *it* sent and that are not answered yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from actors.messages import Failure, FailureCode

W = TypeVar("W")


def least_loaded(accepting: Sequence[W], held: Callable[[W], int]) -> W | None:
    """The worker holding the fewest requests (the first of equals); None if there is none."""
    return min(accepting, key=held) if accepting else None


def overdue(oldest: float | None, now: float, overdue_s: float | None) -> bool:
    """Whether a worker whose oldest held request was sent at ``oldest`` (None: it holds none)
    is overdue at ``now`` (same clock)."""
    return overdue_s is not None and oldest is not None and now - oldest > overdue_s


def pick(
    accepting: Sequence[W],
    held: Callable[[W], int],
    oldest: Callable[[W], float | None],
    max_outstanding: int,
    overdue_s: float | None,
    now: float,
) -> W | None:
    """The worker that gets the next request by the rule above; None if every accepting
    worker already holds ``max_outstanding`` (refuse: :func:`refusal`) or none accepts."""
    open_ = [w for w in accepting if held(w) < max_outstanding]
    timely = [w for w in open_ if not overdue(oldest(w), now, overdue_s)]
    return least_loaded(timely or open_, held)


def refusal(where: str, workers: int, max_outstanding: int) -> Failure:
    """The ``overloaded`` answer when no worker can take a request."""
    return Failure(
        FailureCode.OVERLOADED, f"{where}: all {workers} workers hold {max_outstanding} requests"
    )
