"""Wall-clock bounds and waits, scaled by one factor.

``MEMESYS_TEST_TIME_FACTOR`` (default 1) multiplies every wall-clock bound the tests assert
and every wait's timeout: a slower machine (2 shared cores, a loaded CI runner) sets it to 2
or 3 rather than editing tests. It is read once, here. Bounds that are the scenario itself
(a configured timeout the daemon must honour, a sleep that holds a load) are not scaled.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

TIME_FACTOR = float(os.environ.get("MEMESYS_TEST_TIME_FACTOR") or 1.0)
if TIME_FACTOR <= 0:
    raise ValueError(f"MEMESYS_TEST_TIME_FACTOR must be positive, not {TIME_FACTOR}")


def scaled(seconds: float) -> float:
    """A wall-clock bound or wait timeout on this machine: ``seconds`` times the factor."""
    return seconds * TIME_FACTOR


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.01
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test
    after ``scaled(timeout)`` seconds."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    what: str = "condition",
    interval: float = 0.01,
) -> T:
    """:func:`wait_for` inside an event loop: the loop runs while it waits; ``predicate`` may
    be a coroutine function."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(interval)
