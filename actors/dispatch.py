"""The one dispatch rule for a pool's workers, shared by the pool and by a directory.

A request sent through a :class:`~actors.pool.Pool` and one a
:class:`~actors.bridge.Directory` sends straight to a worker are placed the same way: on the
accepting worker holding the fewest requests; if even that one holds ``max_outstanding``
(so every one does), the request is refused ``overloaded`` rather than queued without end.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, TypeVar

from actors.messages import Failure

W = TypeVar("W")


def least_loaded(accepting: Sequence[W], held: Callable[[W], int]) -> Optional[W]:
    """The worker holding the fewest requests (the first of equals); None if there is none."""
    return min(accepting, key=held) if accepting else None


def refusal(where: str, workers: int, held: int, max_outstanding: int) -> Optional[Failure]:
    """``overloaded`` when the least loaded worker already holds ``max_outstanding``."""
    if held < max_outstanding:
        return None
    return Failure("overloaded", f"{where}: all {workers} workers hold {max_outstanding} requests")
