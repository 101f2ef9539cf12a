"""A supervisor's record of one child, and the states that child goes through.

A child is started (``starting`` until it answers ``Started``), then ``running``. An ordered
stop makes it ``stopping``; an exit of any kind makes it ``dead`` until its restart starts it
again, or ``restarting`` while that restart waits out its backoff timer. A ``transient``
child that exited normally stays ``stopped``; so does every child before its first start.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field

from thespian.actors import ActorAddress

from actors.messages import ChildStatus, TreeStatus, Watch, WorkerStatus
from actors.spec import ChildSpec

__all__ = ["UNRESPONSIVE", "Child", "ChildState", "Progress"]


class ChildState(enum.StrEnum):
    """Where a child is in its life; the value is what :class:`ChildStatus` reports."""

    STARTING = "starting"  # created and sent Init; its Started has not arrived
    RUNNING = "running"  # it answered Started
    STOPPING = "stopping"  # sent Stop in an ordered stop; its exit has not arrived
    RESTARTING = "restarting"  # exited; its restart waits out a backoff timer
    DEAD = "dead"  # exited (or could not be created); its restart is queued
    STOPPED = "stopped"  # never started yet, or a transient child that exited normally


# Reported in a ChildStatus for a running child that did not answer the status query in time;
# a supervisor never holds a child in this state.
UNRESPONSIVE = "unresponsive"

# A reading of a silent child's process: (monotonic time, its progress or None if stopped).
Progress = tuple[float, tuple[float, int] | None]


@dataclass(eq=False)
class Child:
    """The supervisor's record of one child; ``address`` changes on every restart."""

    spec: ChildSpec
    address: ActorAddress | None = None
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    kind: str = "worker"
    started_at: float | None = None
    restarts: int = 0
    escalations: int = 0  # it gave up and exited (a supervisor past its restart intensity)
    health_kills: int = 0  # its health check killed it
    why: str = ""  # why it is exiting, when it was told before its exit arrived
    last_exit: str = ""  # why it last exited abnormally
    stop_granted: bool = False  # its stop was asked for (StopMe, resize, removal): no new work
    restart_times: deque[float] = field(default_factory=deque)  # its restarts in the period
    backoff: int | None = None  # token of the backoff timer its restart waits for
    last_heard: float = 0.0  # monotonic: its Started or its last answer to a health check
    progress: list[Progress] = field(default_factory=list)  # readings while it is silent
    busy: bool = False  # silent past the timeout, but its process works: BUSY_GRACE applies
    watchers: list[tuple[ActorAddress, Watch]] = field(default_factory=list)  # told Gone

    @property
    def alive(self) -> bool:
        return self.state in (ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING)

    @property
    def running(self) -> bool:
        return self.state is ChildState.RUNNING and self.address is not None

    def heard(self) -> None:
        """It gave a sign of work (Started, an answer, a Heartbeat): its silence starts over."""
        self.last_heard = time.monotonic()
        self.progress, self.busy = [], False

    def exited_abnormally(self) -> None:
        """Its abnormal exit arrived: remember why (what it told, else that it crashed)."""
        self.last_exit, self.why = self.why or "exited abnormally", ""

    def status(self, answer: object = None, unresponsive: bool = False) -> ChildStatus:
        """This child as its supervisor sees it; ``answer`` is its own answer to the status
        query (:class:`TreeStatus` or :class:`WorkerStatus`), if it gave one in time."""
        tree = answer if isinstance(answer, TreeStatus) else None
        in_flight = answer.in_flight if isinstance(answer, (TreeStatus, WorkerStatus)) else None
        return ChildStatus(
            self.spec.name,
            self.kind,
            UNRESPONSIVE if unresponsive else self.state.value,
            self.pid,
            self.restarts,
            self.started_at,
            self.spec.restart.value,
            tree.strategy if tree else None,
            in_flight,
            tree.children if tree else (),
            tree.queued if tree else None,
            self.escalations,
            self.health_kills,
            self.last_exit,
            answer.gauges if isinstance(answer, WorkerStatus) else (),
        )
