"""The supervisor: a process that starts, watches and restarts its children (Erlang/OTP's
``supervisor`` on Thespian actors).

Terms
-----
child
    An actor a supervisor started from a :class:`~actors.spec.ChildSpec`: a worker, a pool
    (:class:`~actors.pool.Pool`) or another supervisor. The children of a supervisor are
    ordered: started left to right, stopped right to left. Its state
    (:class:`~actors.child.ChildState`) is what :class:`~actors.messages.ChildStatus` reports.
restart strategy
    What a supervisor restarts when a child exits abnormally (:class:`~actors.spec.Strategy`):

    - ``one_for_one``: only that child.
    - ``one_for_all``: every child: the others are stopped in reverse start order, then all
      are started again in start order.
    - ``rest_for_one``: that child and the children started after it, likewise.
restart type
    Whether an exited child is restarted (:class:`~actors.spec.Restart`): ``permanent``
    always, ``transient`` only after an abnormal exit (anything but a
    :class:`~actors.messages.StopMe` the supervisor granted), ``temporary`` never (it is
    dropped from the children).
restart intensity and period
    ``max_restarts`` restarts within ``period_s`` seconds are allowed; one more and the
    supervisor gives up: it *escalates* (:mod:`actors.restarts`).
escalation
    A supervisor that gives up stops all its children in reverse start order and exits
    abnormally, so that its own supervisor applies its own strategy; the root's exit ends
    the tree. Its parent learns why (:class:`~actors.messages.InitFailed` before it
    announced ``Started``, :class:`~actors.messages.Exiting` after), and so does every
    monitor (:class:`~actors.messages.Down`).
backoff
    A restart may wait before its children start again
    (:class:`~actors.spec.Backoff`, growing with the child's restarts inside the period);
    the supervisor goes on meanwhile (its status answers the child ``restarting``).
shutdown
    An ordered stop (:class:`~actors.messages.Stop`) stops the children in reverse start
    order, each within its budget (:func:`~actors.spec.shutdown_budget`: a worker's
    ``shutdown_s``, a supervisor's the sum of its children's), then exits. A child that
    outlives its budget is killed with its process tree. A supervisor being stopped tells
    the stopper how long it needs (:class:`~actors.messages.Stopping`).
health check
    A child that answers nothing for ``health_timeout_s`` is killed and restarted like a
    crashed one (:mod:`actors.health`); a pid check every :data:`LIVENESS_PERIOD_S` catches
    an exit Thespian did not report.
start-up
    Children start one after another, each within :data:`START_TIMEOUT_S`; a supervisor
    answers ``Started`` only when all of its children have, so a tree is ready bottom-up.

How it runs
-----------
All work that must happen in order (starting children one after another, stopping a group
in reverse order before restarting it, shutting down) is a queue of steps
(:mod:`actors.steps`) run one at a time; a step finishes on the event it waits for
(``Started``, ``ChildActorExited``) or on its own timeout. The handler never blocks, so a
supervisor keeps answering status queries (:mod:`actors.status`) while it restarts a group.
A restart's backoff is not a step: it is a timer, and the restart's starts join the queue
when it fires, so the other children's restarts and stops go on meanwhile. Askers that
resolved a child with a watch are told when it is gone (:mod:`actors.watches`). Every timer
is a typed wakeup (:mod:`actors.wakeups`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    WakeupMessage,
)

from actors.base import BaseActor
from actors.child import Child, ChildState
from actors.health import BUSY_GRACE, HealthChecks
from actors.messages import (
    Ack,
    AddChild,
    Booting,
    ChildStatus,
    Down,
    Exiting,
    Failure,
    FailureCode,
    Heartbeat,
    Init,
    InitFailed,
    Located,
    Monitor,
    RemoveChild,
    Reply,
    Request,
    RestartChild,
    Started,
    StatusQuery,
    Stop,
    StopMe,
    Stopped,
    Stopping,
    TreeStatus,
    WhereIs,
    WorkDone,
)
from actors.processes import kill_tree, process_alive
from actors.restarts import Backoffs, Intensity, restart_group
from actors.spec import (
    SUPERVISOR_STOP_MARGIN_S,
    ChildSpec,
    Restart,
    SupervisorArgs,
    shutdown_budget,
)
from actors.status import StatusGathering
from actors.steps import CallStep, StartStep, Step, StopStep
from actors.wakeups import (
    BackoffOver,
    CheckLiveness,
    HealthRound,
    PollGone,
    StatusDue,
    StepDue,
    Wakeup,
)
from actors.watches import GoneNotices, add_watch

__all__ = ["BUSY_GRACE", "LIVENESS_PERIOD_S", "START_TIMEOUT_S", "Supervisor"]

log = logging.getLogger("actors.supervisor")

START_TIMEOUT_S = 10.0
LIVENESS_PERIOD_S = 0.5


class Supervisor(BaseActor):
    """Starts its children in order and keeps them running by its strategy.

    Init args: :class:`~actors.spec.SupervisorArgs`. Answers (as :class:`Request` payloads)
    ``Ping``, ``WhereIs``, ``StatusQuery``, ``RestartChild``, ``AddChild``, ``RemoveChild``,
    ``Monitor``; obeys ``Stop`` (ordered shutdown, then exit) and ``StopMe`` from a child.
    ``Started`` goes to the parent only once every child has started.
    """

    kind = "supervisor"

    # -- lifecycle ----------------------------------------------------------------------------

    def on_start(self, args: SupervisorArgs) -> None:
        self.configure(args)

    def configure(self, args: SupervisorArgs) -> None:
        self.strategy = args.strategy
        self.backoff = args.backoff
        self.children: list[Child] = [Child(spec) for spec in args.children]
        self._intensity = Intensity(args.max_restarts, args.period_s)
        self._backoffs = Backoffs()
        self._steps: deque[Step] = deque()
        self._current: Step | None = None
        self._pending: deque[Child] = deque()  # exited children whose restart waits its turn
        self._tokens = itertools.count(1)
        self._stop_waiters: list[tuple[Stop, ActorAddress]] = []
        self._monitors: list[tuple[ActorAddress, Request]] = []  # answered Down on exit
        self._down_reason, self._down_requested = "", False
        self._reported_end = 0.0  # monotonic end of the stop budget last reported (Stopping)
        self._shutting_down = False
        self._announced = False
        self._rng = random.Random()
        self._health = HealthChecks(
            self.name,
            args.health_interval_s,
            args.health_timeout_s,
            self.send,
            self._wake,
            self._killed,
        )
        self._status = StatusGathering(self.send, self._wake, self._report_status)
        self._gone = GoneNotices(self.send, self._wake)

    def _wake(self, delay: float, wakeup: Wakeup) -> None:
        self.wakeupAfter(delay, payload=wakeup)

    def announce_started(self) -> None:
        """Started goes up only when all children are up: the tree is ready bottom-up."""
        self._wake(LIVENESS_PERIOD_S, CheckLiveness())
        self._health.start()
        for child in self.children:
            self._steps.append(StartStep(child=child))
        self._steps.append(CallStep(fn=self._announce))
        self._advance()

    def _announce(self) -> None:
        self._announced = True
        super().announce_started()

    def stop_gracefully(self, msg: Stop, sender: ActorAddress) -> None:
        self._stop_waiters.append((msg, sender))
        if not self._shutting_down:
            self._shut_down(f"{self.name} stopping on request")
        self._report_budget(force_to=sender)

    def on_stop(self) -> None:
        """Exiting: the Gone notices still waiting for a process to end go now."""
        gone: GoneNotices | None = getattr(self, "_gone", None)  # None if it never started
        if gone is not None:
            gone.flush()

    # -- messages -----------------------------------------------------------------------------

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        payload = request.payload
        if isinstance(payload, WhereIs):
            self._route(request, sender, payload.path, self._locate)
        elif isinstance(payload, RestartChild):
            self._route(request, sender, payload.path, self._restart_on_request)
        elif isinstance(payload, StatusQuery):
            self._status.ask(request, sender, self.children)
        elif isinstance(payload, AddChild):
            self._add_child(request, sender, payload.spec)
        elif isinstance(payload, RemoveChild):
            self._remove_child(request, sender, payload.name)
        elif isinstance(payload, Monitor):
            watcher = request.reply_to or sender  # addresses compare with ==, never hash
            self._monitors = [(w, r) for w, r in self._monitors if w != watcher]
            self._monitors.append((watcher, request))
        else:
            super().handle_request(request, sender)

    def receive_other(self, msg: object, sender: ActorAddress) -> None:
        if isinstance(msg, ChildActorExited):
            self._child_exited(msg.childAddress)
        elif isinstance(msg, Booting):
            self._child_booting(msg, sender)
        elif isinstance(msg, Started):
            self._child_started(msg, sender)
        elif isinstance(msg, InitFailed):
            log.error("%s: child %s failed to start: %s", self.name, msg.name, msg.reason)
            self._told_why(msg.name, msg.reason, msg.escalated)
        elif isinstance(msg, WakeupMessage):
            self._wakeup(msg.payload)
        elif isinstance(msg, StopMe):
            self._stop_me(msg.name)
        elif isinstance(msg, Heartbeat):
            child = self._find(sender)
            if child is not None and child.state is ChildState.RUNNING:
                child.heard()
        elif isinstance(msg, Reply):
            if not self._health.answered(msg):
                self._status.answered(msg)
        elif isinstance(msg, Stopping):
            self._child_stopping(msg, sender)
        elif isinstance(msg, Exiting):
            log.error("%s: child %s is exiting: %s", self.name, msg.name, msg.reason)
            self._told_why(msg.name, msg.reason, escalated=True)
        elif isinstance(msg, (WorkDone, Stopped)):
            pass
        else:
            super().receive_other(msg, sender)

    def _wakeup(self, wakeup: object) -> None:
        if isinstance(wakeup, CheckLiveness):
            self._check_liveness()
        elif isinstance(wakeup, HealthRound):
            if not self._shutting_down:
                self._health.round(self.children)
        elif isinstance(wakeup, PollGone):
            self._gone.poll()
        elif isinstance(wakeup, StatusDue):
            self._status.due(wakeup.gid)
        elif isinstance(wakeup, BackoffOver):
            self._backoff_over(wakeup.token)
        elif isinstance(wakeup, StepDue):
            self._step_due(wakeup)

    def _told_why(self, name: str, reason: str, escalated: bool) -> None:
        """A child said why it exits (its exit follows): counted and kept for its status."""
        child = self._named(name)
        if child is None:
            return
        child.why = f"escalated: {reason}" if escalated else f"failed to start: {reason}"
        if escalated:
            child.escalations += 1

    # -- the step queue -----------------------------------------------------------------------

    def _advance(self) -> None:
        while self._current is None:
            if not self._steps:
                if not self._pending or self._shutting_down:
                    return
                self._restart(self._pending.popleft())
                continue
            step = self._steps.popleft()
            step.token = next(self._tokens)
            if not self._run(step):
                self._current = step

    def _run(self, step: Step) -> bool:
        """Begin a step; True if it already finished."""
        if isinstance(step, StartStep):
            return self._start_child(step)
        if isinstance(step, StopStep):
            child = step.child
            if not child.alive:
                return True
            child.state = ChildState.STOPPING
            budget = shutdown_budget(child.spec)
            step.deadline = time.monotonic() + budget
            self.send(child.address, Stop())
            self._wake(budget, StepDue(step.token))
            return False
        step.fn()
        return True

    def _finish_step(self) -> None:
        self._current = None
        self._advance()

    def _step_due(self, due: StepDue) -> None:
        """A start or stop step ran out of time: its child is killed (a start's failure is
        an abnormal exit; a stop's was the goal anyway)."""
        step = self._current
        if step is None or step.token != due.token:
            return  # the step finished before its timer
        if isinstance(step, StopStep):
            left = step.deadline - time.monotonic()
            if left > 0.001:  # a child supervisor reported a longer stop
                self._wake(left, due)
                return
        if not isinstance(step, (StopStep, StartStep)):
            self._finish_step()
            return
        child = step.child
        log.error(
            "%s: child %s did not %s in time; killing it",
            self.name,
            child.spec.name,
            "stop" if isinstance(step, StopStep) else "start",
        )
        if child.pid:
            kill_tree(child.pid)
        elif child.address is not None:
            self.send(child.address, ActorExitRequest())
        self._lost(child)
        if isinstance(step, StartStep):
            child.why = f"did not start within {START_TIMEOUT_S:g} s"
            child.exited_abnormally()
            self._after_exit(child, normal=False, starting=True)
        self._finish_step()
        self._status.child_gone(child)

    def _start_child(self, step: StartStep) -> bool:
        child = step.child
        if child not in self.children or child.alive:
            return True  # removed, or already started by a group restart
        try:
            child.address = self.createActor(child.spec.actor)
        except Exception as exc:
            log.error(
                "%s: cannot create %s (%s): %s", self.name, child.spec.name, child.spec.actor, exc
            )
            child.state, child.why = ChildState.DEAD, f"could not be created: {exc}"
            child.exited_abnormally()
            self._after_exit(child, normal=False, starting=True)
            return True
        child.state, child.pid, child.started_at = ChildState.STARTING, None, None
        child.stop_granted = False  # a fresh process: whatever stop it asked for is done
        self.send(
            child.address,
            Init(
                child.spec.name,
                child.spec.args,
                self.admin_port,
                self.root,
                self._health.heartbeat_s,
                f"{self.path}/{child.spec.name}",
            ),
        )
        self._wake(START_TIMEOUT_S, StepDue(step.token))
        return False

    def _check_liveness(self) -> None:
        """Thespian has been seen to miss a ``ChildActorExited`` when two children die at
        once; a cheap pid check every half second makes sure no death goes unnoticed (a
        starting child's too, once its ``Booting`` gave its pid)."""
        for child in list(self.children):
            if (
                child.state in (ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING)
                and child.pid
                and not process_alive(child.pid)
            ):
                log.warning(
                    "%s: child %s (pid %s) died unreported; handling its exit",
                    self.name,
                    child.spec.name,
                    child.pid,
                )
                self._child_exited(child.address)
        if not self._shutting_down:
            self._wake(LIVENESS_PERIOD_S, CheckLiveness())

    # -- child events -------------------------------------------------------------------------

    def _find(self, address: ActorAddress | None) -> Child | None:
        for child in self.children:
            if child.address is not None and child.address == address:
                return child
        return None

    def _named(self, name: str) -> Child | None:
        return next((c for c in self.children if c.spec.name == name), None)

    def _child_booting(self, msg: Booting, sender: ActorAddress) -> None:
        child = self._named(msg.name)
        if child is not None and child.address == sender and child.state is ChildState.STARTING:
            child.pid = msg.pid

    def _child_started(self, msg: Started, sender: ActorAddress) -> None:
        child = self._named(msg.name)
        if child is None or child.address != sender or child.state is not ChildState.STARTING:
            return
        child.state, child.pid, child.kind, child.started_at = (
            ChildState.RUNNING,
            msg.pid,
            msg.kind,
            time.time(),
        )
        child.heard()
        self.on_child_started(child)
        step = self._current
        if isinstance(step, StartStep) and step.child is child:
            self._finish_step()

    def on_child_started(self, child: Child) -> None:
        """Hook for subclasses: ``child`` has just answered ``Started``."""

    def _lost(self, child: Child) -> None:
        """``child``'s process is gone (or going): its watchers learn it, its record is
        emptied."""
        self._gone.child_exited(child)
        child.address, child.pid, child.state = None, None, ChildState.DEAD

    def _killed(self, child: Child) -> None:
        """A child the health check killed: its exit is a crash, whatever it asked for."""
        child.stop_granted = False
        self._child_exited(child.address)

    def _child_exited(self, address: ActorAddress | None) -> None:
        child = self._find(address)
        if child is None:
            return  # a duplicate ChildActorExited, or a child already replaced
        self._lost(child)
        self.on_child_exit(child)
        step = self._current
        if isinstance(step, StopStep) and step.child is child:
            self._finish_step()
            self._status.child_gone(child)
            return
        starting = isinstance(step, StartStep) and step.child is child
        if starting:
            self._current = None
        normal, child.stop_granted = child.stop_granted, False
        if not normal:
            log.error("%s: child %s exited abnormally", self.name, child.spec.name)
            child.exited_abnormally()
        self._after_exit(child, normal, starting)
        self._advance()
        self._status.child_gone(child)

    def on_child_exit(self, child: Child) -> None:
        """Hook for subclasses: ``child`` has just exited (before any restart decision)."""

    def _child_stopping(self, msg: Stopping, sender: ActorAddress) -> None:
        """A child supervisor we are stopping says how long it needs: wait that long."""
        step = self._current
        if not isinstance(step, StopStep) or step.child.address != sender:
            return
        end = time.monotonic() + msg.budget_s
        if end > step.deadline:
            step.deadline = end
            self._report_budget()

    def _report_budget(self, force_to: ActorAddress | None = None) -> None:
        """Tell whoever waits for our ordered stop how long it may still take (Stopping):
        the current child's deadline, the budgets of the children still to stop, a margin;
        again whenever that grows."""
        if not self._stop_waiters:
            return
        now = time.monotonic()
        step = self._current
        remaining = SUPERVISOR_STOP_MARGIN_S + sum(
            shutdown_budget(s.child.spec)
            for s in self._steps
            if isinstance(s, StopStep) and s.child.alive
        )
        if isinstance(step, StopStep):
            remaining += max(0.0, step.deadline - now)
        grew = now + remaining > self._reported_end + 0.05
        if grew:
            self._reported_end = now + remaining
        for _, waiter in self._stop_waiters:
            if grew or waiter == force_to:
                self.send(waiter, Stopping(self.name, remaining))

    def _after_exit(self, child: Child, normal: bool, starting: bool = False) -> None:
        """Restart types: temporary never, transient only when abnormal, permanent always.

        A child that failed to start is restarted at once, ahead of the starts queued after
        it; any other exit waits until the current sequence of steps is done."""
        if self._shutting_down:
            return
        restart = child.spec.restart
        if restart is Restart.TEMPORARY:
            self.children.remove(child)
        elif restart is Restart.TRANSIENT and normal:
            child.state = ChildState.STOPPED
        elif starting:
            self._restart(child)
        else:
            self._pending.append(child)

    def _stop_me(self, name: str) -> None:
        child = self._named(name)
        if child is None or not child.alive:
            return
        child.stop_granted = True
        self._steps.append(StopStep(child=child))
        self._steps.append(CallStep(fn=lambda: self._after_exit(child, normal=True)))
        self._advance()

    # -- restarts -----------------------------------------------------------------------------

    def _restart(self, child: Child, done: Callable[[Failure | None], None] | None = None) -> None:
        """Apply the strategy to a failed child; its steps run before anything queued later
        (so a child that fails while the children start is back before ``Started``)."""
        if child not in self.children or child.alive:
            return  # already restarted as part of a group
        attempt = self._intensity.record(child, time.monotonic())
        if self._intensity.reached:
            reason = self._intensity.describe(child.spec.name)
            if done is not None:
                done(Failure(FailureCode.UNAVAILABLE, f"{self.name}: {reason}"))
            self._shut_down(reason)
            return
        group = restart_group(self.strategy, self.children, child)
        steps: list[Step] = [
            StopStep(child=other) for other in reversed(group) if other is not child and other.alive
        ]
        carried, covered = self._backoffs.take_over(group)
        starts: list[Step] = []
        for member in group:
            if member is not child and member.spec.restart is Restart.TEMPORARY:
                starts.append(CallStep(fn=functools.partial(self._forget, member)))
                continue
            if member not in covered:  # counted already by the restart it was waiting for
                member.restarts += 1
            starts.append(StartStep(child=member))
        starts += carried
        if done is not None:
            starts.append(CallStep(fn=lambda: done(None)))
        delay = (child.spec.backoff or self.backoff).delay(attempt, self._rng)
        if delay > 0:  # the group is stopped first, then the starts wait on a timer
            steps.append(CallStep(fn=lambda: self._back_off(starts, delay)))
        else:
            steps += starts
        self._steps.extendleft(reversed(steps))

    def _back_off(self, starts: list[Step], delay: float) -> None:
        """Hold a restart's steps for ``delay`` seconds without holding up the queue."""
        token = next(self._tokens)
        self._backoffs.hold(token, starts)
        self._wake(delay, BackoffOver(token))

    def _backoff_over(self, token: int) -> None:
        starts = self._backoffs.release(token)
        if starts is None:
            return  # superseded by a group restart, or the supervisor is stopping
        self._steps.extendleft(reversed(starts))
        self._advance()

    def _forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)

    # -- shutdown and escalation --------------------------------------------------------------

    def _shut_down(self, reason: str) -> None:
        """Stop every child in reverse start order, then exit (ordered stop or escalation)."""
        escalating = not self._stop_waiters
        if not self._down_reason:  # the first cause is the one monitors learn
            self._down_reason, self._down_requested = reason, not escalating
        if escalating:
            log.error("%s: %s; stopping children and exiting", self.name, reason)
            # Whoever waits for Started learns why it never comes. After that only a
            # supervising parent reads its mailbox: the root's parent is the starter's
            # context, and an undelivered message keeps an exiting actor alive up to 7 s.
            if not self._announced:
                self.send(self.parent, InitFailed(self.name, reason, escalated=True))
            elif self.root != self.myAddress:
                self.send(self.parent, Exiting(self.name, reason))
        self._shutting_down = True
        self._steps.clear()
        self._pending.clear()
        self._backoffs.clear(self.children)
        for child in reversed(self.children):
            self._steps.append(StopStep(child=child))
        self._steps.append(CallStep(fn=self._exit_now))
        self._advance()

    def _exit_now(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        down = Down(self.name, self._down_reason, self._down_requested)
        for watcher, request in self._monitors:
            self.send(watcher, Reply(request.correlation_id, down))
        for stop, sender in waiters:
            self.send(sender, Stopped(stop.correlation_id, self.name))
        self.send(self.myAddress, ActorExitRequest())

    # -- requests -----------------------------------------------------------------------------

    def _route(
        self,
        request: Request,
        sender: ActorAddress,
        path: str,
        here: Callable[[Request, ActorAddress, Child], None],
    ) -> None:
        """Resolve the first path segment here; forward the rest to that child."""
        head, _, rest = path.strip("/").partition("/")
        child = self._named(head)
        if child is None or child.address is None or child.state is not ChildState.RUNNING:
            state = "no such child" if child is None else f"child is {child.state}"
            failure = Failure(FailureCode.UNAVAILABLE, f"{self.name}/{head}: {state}")
            self.reply(request, sender, error=failure)
        elif rest:
            self._add_watch(request, sender, child)  # its exit takes what is under it along
            payload = dataclasses.replace(request.payload, path=rest)
            self.send(
                child.address,
                dataclasses.replace(request, payload=payload, reply_to=request.reply_to or sender),
            )
        else:
            here(request, sender, child)

    def _add_watch(self, request: Request, sender: ActorAddress, child: Child) -> None:
        """A :class:`WhereIs` that carries a watch found ``child`` (or goes through it)."""
        watch = getattr(request.payload, "watch", None)
        if watch is not None:
            add_watch(child, request.reply_to or sender, watch)

    def _locate(self, request: Request, sender: ActorAddress, child: Child) -> None:
        self._add_watch(request, sender, child)
        self.reply(request, sender, Located(child.spec.name, child.address, child.kind))

    def _restart_on_request(self, request: Request, sender: ActorAddress, child: Child) -> None:
        log.warning("%s: restarting %s on request", self.name, child.spec.name)
        self._steps.append(StopStep(child=child))

        def done(failure: Failure | None) -> None:
            if failure is None:
                self.reply(request, sender, Ack(f"restarted {child.spec.name}"))
            else:
                self.reply(request, sender, error=failure)

        self._steps.append(CallStep(fn=lambda: self._restart(child, done)))
        self._advance()

    def _add_child(self, request: Request, sender: ActorAddress, spec: ChildSpec) -> None:
        if self._named(spec.name) is not None:
            failure = Failure(FailureCode.BAD_REQUEST, f"child {spec.name!r} already exists")
            self.reply(request, sender, error=failure)
            return
        child = Child(spec)
        self.children.append(child)
        self._steps.append(StartStep(child=child))
        self._steps.append(CallStep(fn=lambda: self.reply(request, sender, Ack(spec.name))))
        self._advance()

    def _remove_child(self, request: Request, sender: ActorAddress, name: str) -> None:
        child = self._named(name)
        if child is None:
            failure = Failure(FailureCode.UNAVAILABLE, f"no child {name!r}")
            self.reply(request, sender, error=failure)
            return
        child.stop_granted = True

        def removed() -> None:
            self._forget(child)
            self.reply(request, sender, Ack(name))

        self._steps.append(StopStep(child=child))
        self._steps.append(CallStep(fn=removed))
        self._advance()

    # -- status of the sub-tree ---------------------------------------------------------------

    def _report_status(
        self,
        request: Request,
        sender: ActorAddress,
        answers: dict[Child, object],
        unresponsive: set[Child],
    ) -> None:
        children = tuple(
            self.child_status(c, answers.get(c), c in unresponsive) for c in self.children
        )
        self.reply(
            request,
            sender,
            TreeStatus(
                self.name,
                self.strategy.value,
                children,
                self.tree_in_flight(children),
                self.tree_queued(),
            ),
        )

    def child_status(self, child: Child, answer: object, unresponsive: bool) -> ChildStatus:
        return child.status(answer, unresponsive)

    def tree_in_flight(self, children: tuple[ChildStatus, ...]) -> int | None:
        """The requests held in this sub-tree: the sum of what the children reported."""
        known = [c.in_flight for c in children if c.in_flight is not None]
        return sum(known) if known else None

    def tree_queued(self) -> int | None:
        """The requests this supervisor holds for want of a worker (a pool's); None: it holds
        none by design."""
        return None
