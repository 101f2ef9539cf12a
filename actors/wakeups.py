"""The timers a supervisor or pool sets itself (Thespian's ``wakeupAfter`` payloads).

Each kind of timer is its own frozen dataclass, so the actor dispatches on the type and a
timer carries exactly what it needs (a step's token, a status query's id). Module-level
classes: Thespian keeps the payload with the timer and may pickle it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BackoffOver",
    "CheckLiveness",
    "ExpireWaiting",
    "HealthRound",
    "PollDeparted",
    "PollGone",
    "StatusDue",
    "StepDue",
    "Wakeup",
]


@dataclass(frozen=True)
class CheckLiveness:
    """Check the children's pids (a ``ChildActorExited`` Thespian missed)."""


@dataclass(frozen=True)
class HealthRound:
    """Judge the silent children and ping the running ones (:mod:`actors.health`)."""


@dataclass(frozen=True)
class PollGone:
    """See whether the exited processes that Gone notices wait for have ended
    (:mod:`actors.watches`)."""


@dataclass(frozen=True)
class StatusDue:
    """The budget of status query ``gid`` is spent: answer with what arrived
    (:mod:`actors.status`)."""

    gid: str


@dataclass(frozen=True)
class BackoffOver:
    """The restart held by backoff timer ``token`` may start its children
    (:mod:`actors.restarts`)."""

    token: int


@dataclass(frozen=True)
class StepDue:
    """The start or stop step ``token`` ran out of time: its child is killed
    (:mod:`actors.steps`)."""

    token: int


@dataclass(frozen=True)
class ExpireWaiting:
    """A pool's oldest request waiting for a worker may have waited long enough."""


@dataclass(frozen=True)
class PollDeparted:
    """See whether a pool's exited workers' processes have ended."""


Wakeup = (
    CheckLiveness
    | HealthRound
    | PollGone
    | StatusDue
    | BackoffOver
    | StepDue
    | ExpireWaiting
    | PollDeparted
)
