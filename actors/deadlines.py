"""Deadlines that travel with requests, and the deadline of the request being served.

Every :class:`~actors.messages.Request` may carry ``deadline``: an absolute **wall-clock**
time (``time.time()``, seconds since the epoch) after which nobody waits for its answer. The
asker sets it from its timeout (:func:`after`). A wall clock, not ``time.monotonic()``: each
process's monotonic clock has its own origin, while every actor process of a system runs on
one host and reads the same wall clock. (Across hosts, the clocks must be kept in sync, e.g.
by NTP; a skew shortens or lengthens every deadline by that much.) A step of the wall clock
(an operator setting the time) can expire requests early or late once; nothing else breaks.

A request that arrives after its deadline is not handled (:func:`expired`): its asker has
given up, so doing the work would only do it for nobody, or worse, do something (save a meme)
after the client was told it failed.

While an :class:`~actors.async_actor.AsyncActor` serves a request, the request's deadline
(less a margin for the answer's way back) is the *current* deadline of that coroutine and of
every task it starts (a :mod:`contextvars` variable): every ask it makes
(:meth:`actors.bridge.Bridge.ask`, and so ``AsyncActor.ask``) is bounded by what is left of it
(:func:`bound`), and carries that deadline on. It is the process's one "current deadline":
code that runs for the request reads it too (:func:`current`, :func:`serving`), wherever it
runs: the coroutine and the tasks it starts have it, and ``asyncio.to_thread`` copies context
variables, so it also reaches the worker thread a coroutine starts. This module is pure (no
Thespian), so code that knows nothing else of the runtime may read it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "actors_deadline", default=None
)


def after(timeout: float) -> float:
    """The deadline ``timeout`` seconds from now (wall clock)."""
    return time.time() + timeout


def expired(request: Any, now: float | None = None) -> bool:
    """Whether ``request`` carries a deadline that has passed."""
    deadline = getattr(request, "deadline", None)
    return deadline is not None and (time.time() if now is None else now) >= deadline


def left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (negative once passed); None without a deadline."""
    return None if deadline is None else deadline - time.time()


def current() -> float | None:
    """The deadline of the request this coroutine serves (None: none, or not serving)."""
    return _current.get()


def bound(timeout: float) -> float:
    """``timeout``, shortened to what is left of the current deadline (may be <= 0)."""
    deadline = _current.get()
    return timeout if deadline is None else min(timeout, deadline - time.time())


def serve(deadline: float | None) -> contextvars.Token[float | None]:
    """Make ``deadline`` the current one (of this task and the tasks it starts); pass the
    token to :func:`reset` to restore the previous one."""
    return _current.set(deadline)


def reset(token: contextvars.Token[float | None]) -> None:
    _current.reset(token)


@contextmanager
def serving(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` the current one for the block; a nested block keeps the earlier one
    (a step never outlives the request it serves)."""
    outer = _current.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)
