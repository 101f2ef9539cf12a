"""Restart policy: which children a failure restarts, how often is too often, and backoff.

- The *group* a failure restarts follows the supervisor's strategy (:func:`restart_group`).
- *Restart intensity* (:class:`Intensity`): more than ``max_restarts`` restarts within
  ``period_s`` seconds and the supervisor gives up (it escalates).
- *Backoff* (:class:`Backoffs`): a restart may wait on a timer before its children start;
  the supervisor holds the restart's start steps meanwhile.
"""

from __future__ import annotations

from collections import deque

from actors.child import Child, ChildState
from actors.spec import Strategy
from actors.steps import StartStep, Step

__all__ = ["Backoffs", "Intensity", "restart_group"]


def restart_group(strategy: Strategy, children: list[Child], failed: Child) -> list[Child]:
    """The children to restart, in start order, when ``failed`` failed."""
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(children)
    return children[children.index(failed) :]  # rest_for_one


def _forget_before(times: deque[float], now: float, period_s: float) -> None:
    while times and now - times[0] > period_s:
        times.popleft()


class Intensity:
    """OTP's restart intensity: the restarts of the last ``period_s`` seconds, counted."""

    def __init__(self, max_restarts: int, period_s: float) -> None:
        self.max_restarts, self.period_s = max_restarts, period_s
        self._times: deque[float] = deque()

    def record(self, child: Child, now: float) -> int:
        """Count a restart of ``child`` at ``now``; return how many times ``child`` itself
        restarted before inside the period (its backoff attempt)."""
        _forget_before(self._times, now, self.period_s)
        self._times.append(now)
        _forget_before(child.restart_times, now, self.period_s)
        attempt = len(child.restart_times)
        child.restart_times.append(now)
        return attempt

    @property
    def reached(self) -> bool:
        """More than ``max_restarts`` restarts inside the period: the supervisor gives up."""
        return len(self._times) > self.max_restarts

    def describe(self, last: str) -> str:
        return (
            f"restart intensity reached: more than {self.max_restarts} "
            f"restarts in {self.period_s:g} s (last: {last})"
        )


class Backoffs:
    """Restarts waiting out their backoff timer, by the timer's token: their steps (starts,
    and whatever follows them) join the queue when the timer fires."""

    def __init__(self) -> None:
        self._held: dict[int, list[Step]] = {}

    def hold(self, token: int, steps: list[Step]) -> None:
        self._held[token] = steps
        for step in steps:
            if isinstance(step, StartStep):
                step.child.backoff = token
                if not step.child.alive:
                    step.child.state = ChildState.RESTARTING

    def release(self, token: int) -> list[Step] | None:
        """The steps timer ``token`` held; None if a group restart took them over, or the
        supervisor is stopping."""
        steps = self._held.pop(token, None)
        for step in steps or ():
            if isinstance(step, StartStep) and step.child.backoff == token:
                step.child.backoff = None
        return steps

    def take_over(self, group: list[Child]) -> tuple[list[Step], set[Child]]:
        """A group restart takes over the restarts of its members that wait out a backoff
        (in rest_for_one, a child must not start before the failed one it depends on): it
        drops their starts and carries the rest of their steps (answers to RestartChild).
        Returns the carried steps and the members whose restart was already counted."""
        carried: list[Step] = []
        covered: set[Child] = set()
        for token in {m.backoff for m in group if m.backoff is not None}:
            for step in self._held.pop(token, []):
                if isinstance(step, StartStep):
                    step.child.backoff = None
                    if step.child in group:
                        covered.add(step.child)
                        if not step.child.alive:
                            step.child.state = ChildState.DEAD
                        continue
                carried.append(step)
        return carried, covered

    def clear(self, children: list[Child]) -> None:
        """Drop every held restart (the supervisor shuts down)."""
        self._held.clear()
        for child in children:
            child.backoff = None
            if child.state is ChildState.RESTARTING:
                child.state = ChildState.DEAD
