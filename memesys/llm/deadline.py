"""The deadline of the request being served, as the LLM layer sees it.

An absolute wall-clock time (``time.time()``) after which nobody waits for the answer, or None.
The tree sets it from the actor runtime's deadline (the llm layer never imports actors) around
each stage it runs in a worker thread; ``asyncio.to_thread`` copies context variables, so a
deadline set in a coroutine also reaches the thread it starts.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_current: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "memesys_llm_deadline", default=None
)


def current() -> float | None:
    """The deadline of the request being served (None: none)."""
    return _current.get()


def left(deadline: float | None = None) -> float | None:
    """Seconds until ``deadline`` (the current one when None); negative once passed; None when
    there is no deadline."""
    deadline = _current.get() if deadline is None else deadline
    return None if deadline is None else deadline - time.time()


@contextmanager
def serving(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` the current one for the block (nested blocks keep the earlier one)."""
    outer = _current.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)
