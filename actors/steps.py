"""The steps of a supervisor's queue: what must happen one after another, in order.

Starting children one by one, stopping a group in reverse order before restarting it, and
shutting down are sequences of steps. A step finishes on the event it waits for (the child's
``Started`` or its exit) or when its :class:`~actors.wakeups.StepDue` timer fires; the
supervisor's handler never blocks on one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actors.child import Child

__all__ = ["CallStep", "StartStep", "Step", "StopStep"]


@dataclass(eq=False, kw_only=True)
class _Queued:
    token: int = 0  # set when the step begins; its StepDue timer names it


@dataclass(eq=False, kw_only=True)
class StartStep(_Queued):
    """Create the child and send it Init; done on its Started (or its exit, or the timeout)."""

    child: Child


@dataclass(eq=False, kw_only=True)
class StopStep(_Queued):
    """Send the child Stop; done on its exit, or killed at ``deadline``."""

    child: Child
    deadline: float = 0.0  # monotonic; a child supervisor's Stopping can push it back


@dataclass(eq=False, kw_only=True)
class CallStep(_Queued):
    """Run ``fn`` once the steps before it are done (an answer, a restart, the exit)."""

    fn: Callable[[], None]


Step = StartStep | StopStep | CallStep
