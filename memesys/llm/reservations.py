"""The send times booked for the meme being made, as they travel with its calls.

A meme's admission (:mod:`memesys.pipeline.admission`) books the send times of its first
draft's calls on each provider+model's schedule (:meth:`memesys.llm.limiter.Limiter.book`);
while the meme is made they are the current :class:`Booked` (a context variable, like the
request's deadline: every task the meme's coroutine starts for its calls has it, and they
share the one object). Each call of that provider+model takes the earliest
time left (:func:`take`) for its first attempt; calls past the booking (a retry, a refinement)
take free times from the schedule. A placement that runs the judging group in another process
hands the times left over with the draft (:func:`handover`) and that process holds them
(:func:`holding`) while it judges. A booking says its lane: a background meme's (a task's)
calls take their send times only when they come (:meth:`~memesys.llm.limiter.Limiter.acquire`),
so people's memes go first; its times are only the earliest each may go.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Times:
    """What travels in a message: per provider+model (a limiter's name), its booked send
    times, and whether they are a background meme's."""

    booked: tuple[tuple[str, tuple[float, ...]], ...] = ()
    background: bool = False


NO_TIMES = Times()  # nothing booked (a message's default)


class Booked:
    """Send times (wall clock) per provider+model, each taken once, earliest first; a
    ``background`` meme's (a task's)."""

    def __init__(self, times: Mapping[str, Iterable[float]], background: bool = False) -> None:
        self._times = {name: deque(sorted(booked)) for name, booked in times.items()}
        self.background = background

    def take(self, name: str) -> float | None:
        """The earliest time booked for ``name`` (None: none left)."""
        left = self._times.get(name)
        try:
            return left.popleft() if left is not None else None
        except IndexError:  # taken by another caller meanwhile
            return None

    def handover(self) -> Times:
        """Every time left, taken out (to travel with a request to another process)."""
        times: list[tuple[str, tuple[float, ...]]] = []
        for name, left in self._times.items():
            taken = []
            while left:
                try:
                    taken.append(left.popleft())
                except IndexError:
                    break
            if taken:
                times.append((name, tuple(taken)))
        return Times(tuple(times), self.background)


_current: contextvars.ContextVar[Booked | None] = contextvars.ContextVar(
    "memesys_llm_booked", default=None
)


@contextmanager
def holding(booked: Booked | Times | None) -> Iterator[None]:
    """``booked`` (or times handed over) is the current booking for the block."""
    if isinstance(booked, Times):
        booked = Booked(dict(booked.booked), booked.background)
    token = _current.set(booked)
    try:
        yield
    finally:
        _current.reset(token)


def take(name: str) -> float | None:
    """The current booking's earliest time for ``name`` (None: nothing booked)."""
    booked = _current.get()
    return None if booked is None else booked.take(name)


def handover() -> Times:
    """The current booking's times left, taken out (empty without one)."""
    booked = _current.get()
    return NO_TIMES if booked is None else booked.handover()


def background() -> bool:
    """Whether the meme being made is a background one (a task's)."""
    booked = _current.get()
    return booked is not None and booked.background
