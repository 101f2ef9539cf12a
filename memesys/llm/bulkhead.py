"""Bulkheads: separate concurrency limits, in each process, for writing calls (select, write,
refine) and judging calls (the verifiers, score), so a flood of verifications cannot take the
connections and threads new memes need.

Whoever runs a stage says which kind it is (:func:`stage`, a context variable every task it
starts inherits); the transport takes a slot of that kind for the whole call (its attempts,
waits, hedges and fallbacks) and waits for one at most until the request's deadline; none in
time: ``overloaded`` with Retry-After 1. Calls made outside a stage are not limited. The slots
are the event loop's semaphores: one set per loop, so per process in the daemon (one loop
each).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

WRITING, JUDGING = "writing", "judging"
WRITING_STAGES = ("select", "write", "refine")

_kind: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "memesys_llm_stage_kind", default=None
)
_limits: dict[str, int] = {WRITING: 32, JUDGING: 64}
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
in_use: dict[str, int] = {WRITING: 0, JUDGING: 0}
refusals: dict[str, int] = {WRITING: 0, JUDGING: 0}


class NoRoom(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(f"every {kind} slot of this process is busy")
        self.kind = kind


def kind_of(stage_key: str) -> str:
    """A stage key (``write``, ``refine_2``, ``factuality_1``, ``score``) -> its kind."""
    return WRITING if stage_key.startswith(WRITING_STAGES) else JUDGING


def configure(max_writes: int, max_judgements: int) -> None:
    """The process's limits (the last configuration wins; set before the first call)."""
    with _lock:
        for kind, limit in ((WRITING, max_writes), (JUDGING, max_judgements)):
            if _limits.get(kind) != limit:
                _limits[kind] = limit
                for made in _semaphores.values():
                    made.pop(kind, None)


@contextmanager
def stage(stage_key: str) -> Iterator[None]:
    """The calls made in the block are of ``stage_key``'s kind."""
    token = _kind.set(kind_of(stage_key))
    try:
        yield
    finally:
        _kind.reset(token)


def _semaphore(kind: str) -> asyncio.Semaphore:
    with _lock:
        made = _semaphores.setdefault(asyncio.get_running_loop(), {})
        found = made.get(kind)
        if found is None:
            found = made[kind] = asyncio.Semaphore(_limits[kind])
        return found


@asynccontextmanager
async def slot(deadline: float | None, max_wait_s: float) -> AsyncIterator[None]:
    """A slot of the current stage's kind for the block (none: no limit)."""
    kind = _kind.get()
    if kind is None:
        yield
        return
    semaphore = _semaphore(kind)
    wait = max_wait_s if deadline is None else deadline - time.time()
    try:
        async with asyncio.timeout(max(0.0, wait)):
            await semaphore.acquire()
    except TimeoutError:
        refusals[kind] += 1
        raise NoRoom(kind) from None
    in_use[kind] += 1
    try:
        yield
    finally:
        in_use[kind] -= 1
        semaphore.release()
