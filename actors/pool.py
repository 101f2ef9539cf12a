"""A worker pool: a one-for-one supervisor that also dispatches requests to its workers.

Dispatch goes to the running worker with the least outstanding work; the worker answers the
requester directly and tells the pool (``WorkDone``), so a reply costs no extra hop. When a
worker dies, each request it held is retried on another worker if the request says it is
idempotent, otherwise answered with a ``worker_lost`` failure: never left hanging.

While no worker is running (all of them restarting) requests wait in a bounded queue for at
most ``PoolArgs.wait_s``; a full queue or an expired wait answers ``unavailable``.

A :class:`Cancel` goes on to the worker holding its request (or answers it, still waiting).

A process can also dispatch to the workers itself (:mod:`actors.route`): it subscribes, and
the pool pushes its list of workers (:class:`Members`) whenever that list changes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

from thespian.actors import ActorAddress, WakeupMessage

from actors.child import Child, ChildState
from actors.deadlines import left
from actors.dispatch import pick, refusal
from actors.messages import (
    Ack,
    AddChild,
    Cancel,
    ChildStatus,
    Failure,
    FailureCode,
    Member,
    Members,
    Ping,
    RemoveChild,
    Reply,
    Request,
    Resize,
    RestartChild,
    StatusQuery,
    Subscribe,
    WhereIs,
    WorkDone,
)
from actors.processes import process_alive
from actors.spec import (
    MAX_ATTEMPTS,
    ChildSpec,
    PoolArgs,
    Restart,
    Strategy,
    SupervisorArgs,
)
from actors.steps import CallStep, StartStep, StopStep
from actors.supervisor import Supervisor
from actors.wakeups import ExpireWaiting, PollDeparted

log = logging.getLogger("actors.pool")

_DEPARTED_POLL_S = 0.005
_DEPARTED_MAX_S = 1.0  # Thespian drains an exiting actor's sends for up to 7 s
_SUPERVISOR_REQUESTS = (Ping, WhereIs, StatusQuery, RestartChild, AddChild, RemoveChild)


class Pool(Supervisor):
    """Init args: :class:`~actors.spec.PoolArgs`. Answers ``Resize`` and ``Subscribe`` besides
    the supervisor's requests; any other request payload is work for a worker."""

    kind = "pool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: list[tuple[Request, int, float]] = []  # (request, attempts, expiry)
        self._subscribers: list[tuple[ActorAddress, int]] = []  # (address, pid)
        self._published: tuple[Member, ...] = ()
        self._departed: list[tuple[Member, float]] = []  # exited, process not gone (deadline)
        self._version = 0

    def on_start(self, args: SupervisorArgs | PoolArgs) -> None:
        if not isinstance(args, PoolArgs):
            raise TypeError(f"a pool's args are PoolArgs, not {type(args).__name__}")
        self.pool = args
        self._next_index = args.size
        self.configure(
            SupervisorArgs(
                tuple(self._worker_spec(i) for i in range(args.size)),
                Strategy.ONE_FOR_ONE,
                args.max_restarts,
                args.period_s,
                args.backoff,
                args.health_interval_s,
                args.health_timeout_s,
            )
        )
        # worker name -> {correlation id: (forwarded request, attempts, monotonic time sent)},
        # oldest first
        self._outstanding: dict[str, dict[str, tuple[Request, int, float]]] = {}
        self._owner: dict[str, str] = {}  # correlation id -> worker name

    def _worker_spec(self, index: int) -> ChildSpec:
        return ChildSpec(
            f"worker-{index}",
            self.pool.worker,
            self.pool.worker_args,
            Restart.PERMANENT,
            self.pool.worker_shutdown_s,
        )

    # -- dispatch -----------------------------------------------------------------------------

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        payload = request.payload
        if isinstance(payload, Resize):
            self._resize(request, sender, payload.size)
        elif isinstance(payload, Subscribe):
            address = request.reply_to or sender
            self._subscribers = [s for s in self._subscribers if s[0] != address]
            self._subscribers.append((address, payload.pid))
            self.reply(request, sender, self._members())
        elif isinstance(payload, _SUPERVISOR_REQUESTS):
            super().handle_request(request, sender)
        else:  # its deadline travels on with it
            self._assign(
                dataclasses.replace(request, reply_to=request.reply_to or sender), attempts=0
            )

    def _held_by(self, child: Child) -> dict[str, tuple[Request, int, float]]:
        return self._outstanding.get(child.spec.name, {})

    def _assign(self, request: Request, attempts: int, exclude: Child | None = None) -> None:
        running = [c for c in self.children if self._accepting(c) and c is not exclude]
        if not running:
            self._wait(request, attempts)
            return
        now = time.monotonic()
        worker = pick(
            running,
            lambda c: len(self._held_by(c)),
            lambda c: next(iter(self._held_by(c).values()), (None, 0, None))[2],
            self.pool.max_outstanding,
            self.pool.overdue_bound_s,
            now,
        )
        if worker is None:
            self._fail(request, refusal(self.name, len(running), self.pool.max_outstanding))
            return
        held = self._outstanding.setdefault(worker.spec.name, {})
        held[request.correlation_id] = (request, attempts + 1, now)
        self._owner[request.correlation_id] = worker.spec.name
        self.send(worker.address, request)

    def _accepting(self, child: Child) -> bool:
        return (
            child.state is ChildState.RUNNING and not child.stop_granted and not self._shutting_down
        )

    def _wait(self, request: Request, attempts: int) -> None:
        """Hold a request until a worker is back, bounded in count and time (``wait_s``, or
        the request's own deadline if it comes first: then it is answered ``timeout``)."""
        restarting = any(
            c.state in (ChildState.STARTING, ChildState.RESTARTING, ChildState.DEAD)
            for c in self.children
        )
        if not restarting or len(self._waiting) >= self.pool.max_outstanding:
            self._fail(
                request, Failure(FailureCode.UNAVAILABLE, f"{self.name}: no worker is running")
            )
            return
        now = time.monotonic()
        remaining = left(request.deadline)
        expiry = now + (
            self.pool.wait_s if remaining is None else max(0.0, min(self.pool.wait_s, remaining))
        )
        if not self._waiting or expiry < min(e for _, _, e in self._waiting):
            self.wakeupAfter(expiry - now, payload=ExpireWaiting())
        self._waiting.append((request, attempts, expiry))

    def on_child_started(self, child: Child) -> None:
        waiting, self._waiting = self._waiting, []
        for request, attempts, _ in waiting:
            self._assign(request, attempts)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        expired = [w for w in self._waiting if w[2] <= now]
        self._waiting = [w for w in self._waiting if w[2] > now]
        for request, _, _ in expired:
            remaining = left(request.deadline)
            self._fail(
                request,
                Failure(
                    FailureCode.TIMEOUT,
                    f"{self.name}: the request's deadline passed while it waited for a worker",
                )
                if remaining is not None and remaining <= 0.001
                else Failure(
                    FailureCode.UNAVAILABLE,
                    f"{self.name}: no worker came back within {self.pool.wait_s:g} s",
                ),
            )
        if self._waiting:
            self.wakeupAfter(
                max(0.0, min(e for _, _, e in self._waiting) - now), payload=ExpireWaiting()
            )

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        """After each message: a pool that began to stop (``Stop``, or its restart intensity
        reached) answers the requests waiting for a worker at once, as no worker will come
        back for them; and whatever changed the workers (one started, exited, began to stop)
        is pushed to the subscribers."""
        super().receiveMessage(msg, sender)
        if self._waiting and self._shutting_down:
            waiting, self._waiting = self._waiting, []
            for request, _, _ in waiting:
                self._fail(request, Failure(FailureCode.UNAVAILABLE, f"{self.name} is stopping"))
        if self._subscribers and self._members().workers != self._published:
            self._publish()

    def _members(self) -> Members:
        live = tuple(
            Member(c.spec.name, c.address, self._accepting(c), c.pid)
            for c in self.children
            if c.state in (ChildState.RUNNING, ChildState.STOPPING)
        )
        return Members(
            self.myAddress,
            self._version,
            live + tuple(m for m, _ in self._departed),
            self.pool.max_outstanding,
            self.pool.overdue_bound_s,
        )

    def _publish(self) -> None:
        """The new list to every subscriber whose process still lives."""
        self._version += 1
        members = self._members()
        self._published = members.workers
        self._subscribers = [s for s in self._subscribers if process_alive(s[1])]
        for address, _ in self._subscribers:
            self.send(address, members)

    def _fail(self, request: Request, failure: Failure) -> None:
        self.send(request.reply_to, Reply(request.correlation_id, None, failure))

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and isinstance(msg.payload, ExpireWaiting):
            self._expire_waiting()
        elif isinstance(msg, WakeupMessage) and isinstance(msg.payload, PollDeparted):
            now = time.monotonic()
            self._departed = [
                (m, deadline)
                for m, deadline in self._departed
                if now < deadline and m.pid is not None and process_alive(m.pid)
            ]
            if self._departed:
                self.wakeupAfter(_DEPARTED_POLL_S, payload=PollDeparted())
        elif isinstance(msg, Cancel):
            self._cancel(msg)
        elif isinstance(msg, WorkDone):
            name = self._owner.pop(msg.correlation_id, None)
            if name is not None:
                self._outstanding.get(name, {}).pop(msg.correlation_id, None)
        else:
            super().receive_other(msg, sender)

    def _cancel(self, cancel: Cancel) -> None:
        """To the worker holding the request; one still waiting for a worker is answered
        ``cancelled`` here."""
        name = self._owner.get(cancel.correlation_id)
        worker = next((c for c in self.children if c.spec.name == name), None)
        if worker is not None and worker.address is not None:
            self.send(worker.address, cancel)
            return
        waiting = [w for w in self._waiting if w[0].correlation_id == cancel.correlation_id]
        self._waiting = [w for w in self._waiting if w not in waiting]
        for request, _, _ in waiting:
            self._fail(request, Failure(FailureCode.CANCELLED, f"{self.name}: cancelled"))

    def on_child_exit(self, child: Child) -> None:
        lost = self._outstanding.pop(child.spec.name, {})
        for cid, (request, attempts, _) in lost.items():
            self._owner.pop(cid, None)
            if request.idempotent and attempts < MAX_ATTEMPTS:
                self._assign(request, attempts, exclude=child)
            else:
                self._fail(
                    request,
                    Failure(
                        FailureCode.WORKER_LOST,
                        f"{self.name}/{child.spec.name} exited with the request in flight",
                    ),
                )
        if lost:
            log.warning("%s: %s exited holding %d requests", self.name, child.spec.name, len(lost))
        self._depart(child)

    def _depart(self, child: Child) -> None:
        """An exited worker's process drains its last sends (replies to subscribers among
        them) before it ends; it stays listed, taking no work, until then, so that a
        subscriber gets those replies before it learns that the worker's requests are lost."""
        departed = [m for m, _ in self._departed]
        last = next(
            (m for m in self._published if m.name == child.spec.name and m not in departed), None
        )
        if last is None or last.pid is None or not process_alive(last.pid):
            return
        if not self._departed:
            self.wakeupAfter(_DEPARTED_POLL_S, payload=PollDeparted())
        self._departed.append(
            (dataclasses.replace(last, accepting=False), time.monotonic() + _DEPARTED_MAX_S)
        )

    # -- resizing -----------------------------------------------------------------------------

    def _resize(self, request: Request, sender: ActorAddress, size: int) -> None:
        if size < 0:
            self.reply(request, sender, error=Failure(FailureCode.BAD_REQUEST, "size must be >= 0"))
            return
        while len(self.children) < size:
            child = Child(self._worker_spec(self._next_index))
            self._next_index += 1
            self.children.append(child)
            self._steps.append(StartStep(child=child))
        for child in self.children[size:]:
            child.stop_granted = True  # no new work; its queued work is answered first
            self._steps.append(StopStep(child=child))
            self._steps.append(CallStep(fn=functools.partial(self._forget, child)))
        self._steps.append(CallStep(fn=lambda: self.reply(request, sender, Ack(f"{size} workers"))))
        self._advance()

    def tree_in_flight(self, children: tuple[ChildStatus, ...]) -> int | None:
        """What the workers reported holding, plus the requests waiting for a worker. (The
        pool's own books count only what it dispatched itself; a directory sends most
        requests to the workers directly.)"""
        known = [c.in_flight for c in children if c.in_flight is not None]
        return sum(known) + len(self._waiting) if known or self._waiting else None

    def tree_queued(self) -> int | None:
        """The requests waiting for a worker to be back (see :meth:`_wait`)."""
        return len(self._waiting)
