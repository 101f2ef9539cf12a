"""The supervisor actor: ordered children, restart strategies, intensity, ordered shutdown.

All work that must happen in order (starting children one after another, stopping a group in
reverse order before restarting it, shutting down) is a queue of *steps* run one at a time;
a step finishes on the event it waits for (``Started``, ``ChildActorExited``) or on its own
timeout. The handler never blocks, so a supervisor keeps answering status queries while it
restarts a group. A restart's backoff is not a step: it is a timer, and the restart's starts
join the queue when it fires, so the other children's restarts and stops go on meanwhile.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    WakeupMessage,
)

from actors.base import BaseActor
from actors.deadlines import after
from actors.messages import (
    Ack,
    AddChild,
    ChildStatus,
    Down,
    Exiting,
    Failure,
    Gone,
    Heartbeat,
    Init,
    InitFailed,
    Located,
    Monitor,
    Ping,
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
    Watch,
    WhereIs,
    WorkDone,
    WorkerStatus,
    new_correlation_id,
)
from actors.spec import (
    SUPERVISOR_STOP_MARGIN_S,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorArgs,
    shutdown_budget,
)

log = logging.getLogger("actors.supervisor")

START_TIMEOUT_S = 10.0
# A supervisor asks its children for their status with this fraction of its own budget, so
# that a child supervisor's answer (its own unresponsive children marked) arrives in time.
STATUS_NESTED_FRACTION = 0.6
STATUS_MIN_S = 0.05
LIVENESS_PERIOD_S = 0.5
_LIVENESS = "liveness"
_HEALTH = "health"
_GONE = "gone"
# A health round that runs this much later than planned means the supervisor itself was held
# up (SIGSTOPped, starved): its children's silence is not theirs, they get a fresh timeout.
HEALTH_LATE_S = 0.5
# A silent child whose process visibly works (CPU time or context switches advance) is busy,
# not hung: it is killed only after this many health timeouts of silence.
BUSY_GRACE = 3
GONE_POLL_S = 0.005
GONE_MAX_S = 1.0  # a Gone waits at most this long for the exited process tree to end
_STATUS = "status"  # wakeup payloads (_STATUS, gather id) and (_BACKOFF, token)
_BACKOFF = "backoff"


def process_alive(pid: int) -> bool:
    """False once ``pid`` has exited (a zombie counts as exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_progress(pid: int) -> tuple[float, int] | None:
    """What ``pid`` has done so far (CPU seconds, context switches); None if it is stopped
    (SIGSTOP: it can do nothing) or gone. Two readings that differ: it ran in between."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                return None
            cpu, switches = proc.cpu_times(), proc.num_ctx_switches()
    except psutil.Error:
        return None
    return cpu.user + cpu.system, switches.voluntary + switches.involuntary


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (an unresponsive child on shutdown)."""
    try:
        root = psutil.Process(pid)
        victims = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@dataclass(eq=False)
class Child:
    """The supervisor's record of one child; ``address`` changes on every restart."""

    spec: ChildSpec
    address: ActorAddress | None = None
    state: str = "stopped"  # starting, running, stopping, dead, stopped
    pid: int | None = None
    kind: str = "worker"
    started_at: float | None = None
    restarts: int = 0
    stop_granted: bool = False  # its stop was asked for (StopMe, resize, removal): no new work
    restart_times: deque = field(default_factory=deque)  # its restarts inside the period
    backoff: int | None = None  # token of the backoff timer its restart waits for
    last_heard: float = 0.0  # monotonic: its Started or its last answer to a health check
    progress: list = field(default_factory=list)  # (time, process_progress) while silent
    busy: bool = False  # silent past the timeout, but its process works: BUSY_GRACE applies
    watchers: list = field(default_factory=list)  # (address, Watch): told Gone when it exits

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def status(self, answer: Any = None, unresponsive: bool = False) -> ChildStatus:
        """This child as its supervisor sees it; ``answer`` is its own answer to the status
        query (:class:`TreeStatus` or :class:`WorkerStatus`), if it gave one in time."""
        tree = answer if isinstance(answer, TreeStatus) else None
        in_flight = answer.in_flight if isinstance(answer, (TreeStatus, WorkerStatus)) else None
        return ChildStatus(
            self.spec.name,
            self.kind,
            "unresponsive" if unresponsive else self.state,
            self.pid,
            self.restarts,
            self.started_at,
            self.spec.restart.value,
            tree.strategy if tree else None,
            in_flight,
            tree.children if tree else (),
        )


@dataclass(eq=False)
class _Step:
    token: int = 0


@dataclass(eq=False)
class _StartStep(_Step):
    child: Child = None  # type: ignore[assignment]


@dataclass(eq=False)
class _StopStep(_Step):
    child: Child = None  # type: ignore[assignment]
    deadline: float = 0.0  # monotonic; a child supervisor's Stopping can push it back


@dataclass(eq=False)
class _CallStep(_Step):
    fn: Callable[[], None] = None  # type: ignore[assignment]


@dataclass(eq=False)
class _Gather:
    """A status query waiting for its running children's answers, until its own deadline."""

    request: Request
    sender: ActorAddress
    gid: str = field(default_factory=new_correlation_id)
    asked: dict[str, tuple[Child, ActorAddress]] = field(default_factory=dict)  # by cid
    answers: dict[str, Any] = field(default_factory=dict)  # by cid; None: a failure


class Supervisor(BaseActor):
    """Starts its children in order and keeps them running by its strategy.

    Init args: :class:`~actors.spec.SupervisorArgs`. Answers (as :class:`Request` payloads)
    ``Ping``, ``WhereIs``, ``StatusQuery``, ``RestartChild``, ``AddChild``, ``RemoveChild``;
    obeys ``Stop`` (ordered shutdown, then exit) and ``StopMe`` from a child.
    ``Started`` goes to the parent only once every child has started.
    """

    kind = "supervisor"

    # -- lifecycle ----------------------------------------------------------------------------

    def on_start(self, args: SupervisorArgs) -> None:
        self.configure(args)

    def configure(self, args: SupervisorArgs) -> None:
        self.strategy = args.strategy
        self.max_restarts, self.period_s, self.backoff = (
            args.max_restarts,
            args.period_s,
            args.backoff,
        )
        self.children: list[Child] = [Child(spec) for spec in args.children]
        self._restart_times: deque[float] = deque()
        self._steps: deque[_Step] = deque()
        self._current: _Step | None = None
        self._pending: deque[Child] = deque()
        self._tokens = itertools.count(1)
        self._gathers: dict[str, _Gather] = {}  # by the correlation id of a child's query
        self._status_pending: dict[str, _Gather] = {}  # by gather id, until answered
        self._delayed: dict[int, list[_Step]] = {}  # restart steps waiting out a backoff
        self._stop_waiters: list[tuple[Stop, ActorAddress]] = []
        self._monitors: list[tuple[ActorAddress, Request]] = []  # answered Down on exit
        self._down_reason, self._down_requested = "", False
        self._reported_end = 0.0  # monotonic end of the stop budget last reported (Stopping)
        self._shutting_down = False
        self._announced = False
        self._rng = random.Random()
        self.health_interval_s, self.health_timeout_s = (
            args.health_interval_s,
            args.health_timeout_s,
        )
        self._pings: dict[str, tuple[Child, ActorAddress, float]] = {}  # by correlation id
        self._health_due = 0.0  # monotonic time the next health round was planned for
        self._pinged_at = 0.0  # monotonic time of the last round of pings
        self._gone: list[tuple[list[int], float, list[tuple[ActorAddress, Gone]]]] = []

    def announce_started(self) -> None:
        """Started goes up only when all children are up: the tree is ready bottom-up."""
        self.wakeupAfter(LIVENESS_PERIOD_S, payload=_LIVENESS)
        if self.health_interval_s > 0:
            self._schedule_health(time.monotonic(), self._ping_period())
        for child in self.children:
            self._steps.append(_StartStep(child=child))
        self._steps.append(_CallStep(fn=self._announce))
        self._advance()

    def _announce(self) -> None:
        self._announced = True
        super().announce_started()

    def stop_gracefully(self, msg: Stop, sender: ActorAddress) -> None:
        self._stop_waiters.append((msg, sender))
        if not self._shutting_down:
            self._shut_down(f"{self.name} stopping on request")
        self._report_budget(force_to=sender)

    # -- messages -----------------------------------------------------------------------------

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        payload = request.payload
        if isinstance(payload, WhereIs):
            self._route(request, sender, payload.path, self._locate)
        elif isinstance(payload, RestartChild):
            self._route(request, sender, payload.path, self._restart_on_request)
        elif isinstance(payload, StatusQuery):
            self._status(request, sender)
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

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, ChildActorExited):
            self._child_exited(msg.childAddress)
        elif isinstance(msg, Started):
            self._child_started(msg, sender)
        elif isinstance(msg, InitFailed):
            log.error("%s: child %s failed to start: %s", self.name, msg.name, msg.reason)
        elif isinstance(msg, WakeupMessage):
            self._wakeup(msg.payload)
        elif isinstance(msg, StopMe):
            self._stop_me(msg.name)
        elif isinstance(msg, Heartbeat):
            child = self._find(sender)
            if child is not None and child.state == "running":
                self._heard(child)
        elif isinstance(msg, Reply):
            if msg.correlation_id in self._pings:
                self._pong(msg)
            else:
                self._gathered(msg)
        elif isinstance(msg, Stopping):
            self._child_stopping(msg, sender)
        elif isinstance(msg, Exiting):
            log.error("%s: child %s is exiting: %s", self.name, msg.name, msg.reason)
        elif isinstance(msg, (WorkDone, Stopped)):
            pass
        else:
            super().receive_other(msg, sender)

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

    def _run(self, step: _Step) -> bool:
        """Begin a step; True if it already finished."""
        if isinstance(step, _StartStep):
            return self._start_child(step)
        if isinstance(step, _StopStep):
            child = step.child
            if not child.alive:
                return True
            child.state = "stopping"
            budget = shutdown_budget(child.spec)
            step.deadline = time.monotonic() + budget
            self.send(child.address, Stop())
            self.wakeupAfter(budget, payload=step.token)
            return False
        step.fn()
        return True

    def _finish_step(self) -> None:
        self._current = None
        self._advance()

    def _start_child(self, step: _StartStep) -> bool:
        child = step.child
        if child not in self.children or child.alive:
            return True  # removed, or already started by a group restart
        try:
            child.address = self.createActor(child.spec.actor)
        except Exception as exc:
            log.error(
                "%s: cannot create %s (%s): %s", self.name, child.spec.name, child.spec.actor, exc
            )
            child.state = "dead"
            self._after_exit(child, normal=False, starting=True)
            return True
        child.state, child.pid, child.started_at = "starting", None, None
        child.stop_granted = False  # a fresh process: whatever stop it asked for is done
        self.send(
            child.address,
            Init(
                child.spec.name,
                child.spec.args,
                self.admin_port,
                self.root,
                self._ping_period() / 2 if self.health_interval_s > 0 else 0.0,
            ),
        )
        self.wakeupAfter(START_TIMEOUT_S, payload=step.token)
        return False

    def _check_liveness(self) -> None:
        """Thespian has been seen to miss a ``ChildActorExited`` when two children die at
        once; a cheap pid check every half second makes sure no death goes unnoticed."""
        for child in list(self.children):
            if (
                child.state in ("running", "stopping")
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
            self.wakeupAfter(LIVENESS_PERIOD_S, payload=_LIVENESS)

    # -- health checks ------------------------------------------------------------------------

    def _ping_period(self) -> float:
        """Pings go every ``health_interval_s``, and at least twice per timeout."""
        return min(self.health_interval_s, self.health_timeout_s / 2)

    def _schedule_health(self, now: float, delay: float) -> None:
        self._health_due = now + delay
        self.wakeupAfter(delay, payload=_HEALTH)

    def _health_round(self) -> None:
        """A pid check cannot see a child that is alive but does not work (SIGSTOPped, hung,
        deadlocked): only an answer can. Every running child is pinged every period; one
        that has given no sign of work (no Pong, no Heartbeat, no Started) for
        ``health_timeout_s`` is killed, process tree and all, and restarted like a crashed one.
        (A busy child's ping may wait behind its queued work, but taking up each message it
        sends a Heartbeat, at most twice a period: only a child stuck in one handler, or
        frozen, falls silent.) The next round is planned for the next period, or earlier for
        the first child whose silence reaches the timeout, so a frozen child is killed
        ``health_timeout_s`` after its last sign of work.

        Silent is not always hung: a child in one long CPU-bound handler, or whose answers
        wait behind its own transmits to slow receivers, runs but says nothing. So a child
        silent for the timeout whose process visibly worked since the previous reading (CPU
        time or context switches advanced; a SIGSTOPped one never does) is given up to
        ``BUSY_GRACE`` timeouts of silence, checked again each period."""
        if self._shutting_down:
            return
        now = time.monotonic()
        late = now - self._health_due
        running = [c for c in self.children if c.state == "running" and c.address is not None]
        if late > HEALTH_LATE_S:
            # We were held up ourselves: the children's answers may be waiting in our mailbox.
            log.warning(
                "%s: health checks ran %.1f s late; its children get a fresh timeout",
                self.name,
                late,
            )
            for child in running:
                self._heard(child)
        else:
            for child in running:
                self._judge(child, now)
            running = [c for c in running if c.state == "running"]
        timeout = self.health_timeout_s
        self._pings = {cid: p for cid, p in self._pings.items() if now - p[2] < timeout}
        period = self._ping_period()
        if now - self._pinged_at >= period * 0.9:
            self._pinged_at = now
            for child in running:
                cid = new_correlation_id()
                self._pings[cid] = (child, child.address, now)
                self.send(child.address, Request(Ping(), cid, deadline=after(timeout)))
        due = min(
            [period - (now - self._pinged_at)]
            + [c.last_heard + timeout - now for c in running if not c.busy]
        )
        self._schedule_health(now, max(0.005, due))

    def _judge(self, child: Child, now: float) -> None:
        """Kill ``child`` if it has been silent too long (see :meth:`_health_round`)."""
        silent, timeout, period = now - child.last_heard, self.health_timeout_s, self._ping_period()
        if silent < period and silent < timeout:
            return
        # Did its process run since a reading at least a period old? (CPU time is counted in
        # ticks of 10 ms: readings closer than that may show no change.)
        current = process_progress(child.pid)
        older = [reading for at, reading in child.progress if now - at >= period * 0.9]
        worked = (
            current is not None and bool(older) and older[-1] is not None and current != older[-1]
        )
        child.progress = [(at, r) for at, r in child.progress if now - at < 2 * period] + [
            (now, current)
        ]
        if silent < timeout:
            return
        if worked and silent < BUSY_GRACE * timeout:
            if not child.busy:
                child.busy = True
                log.warning(
                    "%s: child %s (pid %s) has answered nothing for %.1f s but its "
                    "process works; it gets up to %.0f s",
                    self.name,
                    child.spec.name,
                    child.pid,
                    silent,
                    BUSY_GRACE * timeout,
                )
            return
        self._unresponsive(child, silent)

    def _heard(self, child: Child) -> None:
        child.last_heard = time.monotonic()
        child.progress, child.busy = [], False

    def _pong(self, reply: Reply) -> None:
        child, address, _ = self._pings.pop(reply.correlation_id)
        if child.address is not None and child.address == address:  # any answer: it works
            self._heard(child)

    def _unresponsive(self, child: Child, silent: float) -> None:
        """Kill a child that answers nothing; its exit is a crash (restart, intensity)."""
        log.warning(
            "%s: child %s (pid %s) answered no health check and took up no message "
            "for %.1f s (timeout %.1f s%s); killing it",
            self.name,
            child.spec.name,
            child.pid,
            silent,
            self.health_timeout_s,
            ", though its process worked" if child.busy else "",
        )
        kill_tree(child.pid)
        child.stop_granted = False  # whatever it asked for, this exit is abnormal
        self._child_exited(child.address)

    # -- watches: who is told when a child is gone ------------------------------------------

    def _add_watch(self, request: Request, sender: ActorAddress, child: Child) -> None:
        """A :class:`WhereIs` that carries a :class:`Watch` found ``child`` (or goes through
        it): its asker is told :class:`Gone` when ``child`` exits. One watch per asker and
        path; watches of dead askers are dropped."""
        watch: Watch | None = getattr(request.payload, "watch", None)
        if watch is None:
            return
        watcher = request.reply_to or sender  # addresses compare with ==, never hash
        kept = [(a, w) for a, w in child.watchers if not (a == watcher and w.path == watch.path)]
        if len(kept) >= 16:
            kept = [(a, w) for a, w in kept if process_alive(w.pid)]
        child.watchers = kept + [(watcher, watch)]

    def _tell_gone(self, child: Child) -> None:
        """``child`` has exited: tell its watchers, once its process and the processes under
        it have ended (poll every ``GONE_POLL_S``, at most ``GONE_MAX_S``). Thespian reports
        an exit before the exiting process has sent its last messages (answers among them),
        and a process ends only once its sends are acknowledged: so the answers arrive
        first, and the watcher fails only what truly was lost."""
        watchers, child.watchers = child.watchers, []
        if not watchers:
            return
        notices = [
            (address, Gone(watch.token, watch.path))
            for address, watch in watchers
            if process_alive(watch.pid)
        ]
        pids: list[int] = []
        if child.pid:
            try:
                proc = psutil.Process(child.pid)
                pids = [p.pid for p in proc.children(recursive=True)] + [child.pid]
            except psutil.NoSuchProcess:
                pass
        pids = [pid for pid in pids if process_alive(pid)]
        if not pids:
            for address, gone in notices:
                self.send(address, gone)
            return
        if not self._gone:
            self.wakeupAfter(GONE_POLL_S, payload=_GONE)
        self._gone.append((pids, time.monotonic() + GONE_MAX_S, notices))

    def on_stop(self) -> None:
        """Exiting: the Gone notices still waiting for a process to end go now."""
        for _, _, notices in getattr(self, "_gone", ()):
            for address, gone in notices:
                self.send(address, gone)
        self._gone = []

    def _send_gone(self) -> None:
        now = time.monotonic()
        waiting = []
        for pids, deadline, notices in self._gone:
            pids = [pid for pid in pids if process_alive(pid)]
            if pids and now < deadline:
                waiting.append((pids, deadline, notices))
                continue
            for address, gone in notices:
                self.send(address, gone)
        self._gone = waiting
        if waiting:
            self.wakeupAfter(GONE_POLL_S, payload=_GONE)

    def _wakeup(self, token: Any) -> None:
        if token == _LIVENESS:
            self._check_liveness()
            return
        if token == _HEALTH:
            self._health_round()
            return
        if token == _GONE:
            self._send_gone()
            return
        if isinstance(token, tuple) and token[0] == _STATUS:
            gather = self._status_pending.get(token[1])
            if gather is not None:  # else: every child answered in time
                self._finish_gather(gather)
            return
        if isinstance(token, tuple) and token[0] == _BACKOFF:
            self._backoff_over(token[1])
            return
        step = self._current
        if step is None or step.token != token:
            return  # the step finished before its timer
        if isinstance(step, _StopStep):
            left = step.deadline - time.monotonic()
            if left > 0.001:  # a child supervisor reported a longer stop
                self.wakeupAfter(left, payload=token)
                return
        if isinstance(step, (_StopStep, _StartStep)):
            child = step.child
            log.error(
                "%s: child %s did not %s in time; killing it",
                self.name,
                child.spec.name,
                "stop" if isinstance(step, _StopStep) else "start",
            )
            if child.pid:
                kill_tree(child.pid)
            elif child.address is not None:
                self.send(child.address, ActorExitRequest())
            was_start = isinstance(step, _StartStep)
            self._tell_gone(child)
            child.address, child.pid, child.state = None, None, "dead"
            if was_start:
                self._after_exit(child, normal=False, starting=True)
            self._finish_step()
            self._gone_from_gathers(child)
            return
        self._finish_step()

    # -- child events -------------------------------------------------------------------------

    def _find(self, address: ActorAddress) -> Child | None:
        for child in self.children:
            if child.address is not None and child.address == address:
                return child
        return None

    def _named(self, name: str) -> Child | None:
        return next((c for c in self.children if c.spec.name == name), None)

    def _child_started(self, msg: Started, sender: ActorAddress) -> None:
        child = self._named(msg.name)
        if child is None or child.address != sender or child.state != "starting":
            return
        child.state, child.pid, child.kind, child.started_at = (
            "running",
            msg.pid,
            msg.kind,
            time.time(),
        )
        self._heard(child)
        self.on_child_started(child)
        step = self._current
        if isinstance(step, _StartStep) and step.child is child:
            self._finish_step()

    def on_child_started(self, child: Child) -> None:
        """Hook for subclasses: ``child`` has just answered ``Started``."""

    def _child_exited(self, address: ActorAddress) -> None:
        child = self._find(address)
        if child is None:
            return  # a duplicate ChildActorExited, or a child already replaced
        self._tell_gone(child)
        child.address, child.pid, child.state = None, None, "dead"
        self.on_child_exit(child)
        step = self._current
        if isinstance(step, _StopStep) and step.child is child:
            self._finish_step()
            self._gone_from_gathers(child)
            return
        starting = isinstance(step, _StartStep) and step.child is child
        if starting:
            self._current = None
        normal, child.stop_granted = child.stop_granted, False
        if not normal:
            log.error("%s: child %s exited abnormally", self.name, child.spec.name)
        self._after_exit(child, normal, starting)
        self._advance()
        self._gone_from_gathers(child)

    def on_child_exit(self, child: Child) -> None:
        """Hook for subclasses: ``child`` has just exited (before any restart decision)."""

    def _child_stopping(self, msg: Stopping, sender: ActorAddress) -> None:
        """A child supervisor we are stopping says how long it needs: wait that long."""
        step = self._current
        if not isinstance(step, _StopStep) or step.child.address != sender:
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
            if isinstance(s, _StopStep) and s.child.alive
        )
        if isinstance(step, _StopStep):
            remaining += max(0.0, step.deadline - now)
        grew = now + remaining > self._reported_end + 0.05
        if grew:
            self._reported_end = now + remaining
        for _, waiter in self._stop_waiters:
            if grew or waiter == force_to:
                self.send(waiter, Stopping(self.name, remaining))

    def _after_exit(self, child: Child, normal: bool, starting: bool = False) -> None:
        """OTP restart types: temporary never, transient only when abnormal, permanent always.

        A child that failed to start is restarted at once, ahead of the starts queued after
        it; any other exit waits until the current sequence of steps is done."""
        if self._shutting_down:
            return
        restart = child.spec.restart
        if restart is Restart.TEMPORARY:
            self.children.remove(child)
        elif restart is Restart.TRANSIENT and normal:
            child.state = "stopped"
        elif starting:
            self._restart(child)
        else:
            self._pending.append(child)

    def _stop_me(self, name: str) -> None:
        child = self._named(name)
        if child is None or not child.alive:
            return
        child.stop_granted = True
        self._steps.append(_StopStep(child=child))
        self._steps.append(_CallStep(fn=lambda: self._after_exit(child, normal=True)))
        self._advance()

    # -- restarts -----------------------------------------------------------------------------

    def _restart(self, child: Child, done: Callable[[Failure | None], None] | None = None) -> None:
        """Apply the strategy to a failed child; its steps run before anything queued later
        (so a child that fails while the children start is back before ``Started``)."""
        if child not in self.children or child.alive:
            return  # already restarted as part of a group
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.period_s:
            self._restart_times.popleft()
        self._restart_times.append(now)
        while child.restart_times and now - child.restart_times[0] > self.period_s:
            child.restart_times.popleft()
        attempt = len(child.restart_times)  # this child's earlier restarts in the period
        child.restart_times.append(now)
        if len(self._restart_times) > self.max_restarts:
            reason = (
                f"restart intensity reached: more than {self.max_restarts} "
                f"restarts in {self.period_s:g} s (last: {child.spec.name})"
            )
            if done is not None:
                done(Failure("unavailable", f"{self.name}: {reason}"))
            self._shut_down(reason)
            return
        index = self.children.index(child)
        group = {
            Strategy.ONE_FOR_ONE: [child],
            Strategy.ONE_FOR_ALL: list(self.children),
            Strategy.REST_FOR_ONE: self.children[index:],
        }[self.strategy]
        steps: list[_Step] = [
            _StopStep(child=other)
            for other in reversed(group)
            if other is not child and other.alive
        ]
        carried, covered = self._cancel_backoffs(group)
        starts: list[_Step] = []
        for member in group:
            if member is not child and member.spec.restart is Restart.TEMPORARY:
                starts.append(_CallStep(fn=lambda m=member: self._forget(m)))
                continue
            if member not in covered:  # counted already by the restart it was waiting for
                member.restarts += 1
            starts.append(_StartStep(child=member))
        starts += carried
        if done is not None:
            starts.append(_CallStep(fn=lambda: done(None)))
        delay = (child.spec.backoff or self.backoff).delay(attempt, self._rng)
        if delay > 0:  # the group is stopped first, then the starts wait on a timer
            steps.append(_CallStep(fn=lambda: self._back_off(starts, delay)))
        else:
            steps += starts
        self._steps.extendleft(reversed(steps))

    def _back_off(self, starts: list[_Step], delay: float) -> None:
        """Hold a restart's steps for ``delay`` seconds without holding up the queue."""
        token = next(self._tokens)
        self._delayed[token] = starts
        for step in starts:
            if isinstance(step, _StartStep):
                step.child.backoff = token
                if not step.child.alive:
                    step.child.state = "restarting"
        self.wakeupAfter(delay, payload=(_BACKOFF, token))

    def _backoff_over(self, token: int) -> None:
        starts = self._delayed.pop(token, None)
        if starts is None:
            return  # superseded by a group restart, or the supervisor is stopping
        for step in starts:
            if isinstance(step, _StartStep) and step.child.backoff == token:
                step.child.backoff = None
        self._steps.extendleft(reversed(starts))
        self._advance()

    def _cancel_backoffs(self, group: list[Child]) -> tuple[list[_Step], set[Child]]:
        """A group restart takes over the restarts of its members that wait out a backoff
        (in rest_for_one, a child must not start before the failed one it depends on): it
        drops their starts and carries the rest of their steps (answers to RestartChild)."""
        carried: list[_Step] = []
        covered: set[Child] = set()
        for token in {m.backoff for m in group if m.backoff is not None}:
            for step in self._delayed.pop(token, []):
                if isinstance(step, _StartStep):
                    step.child.backoff = None
                    if step.child in group:
                        covered.add(step.child)
                        if not step.child.alive:
                            step.child.state = "dead"
                        continue
                carried.append(step)
        return carried, covered

    def _forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)

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
                self.send(self.parent, InitFailed(self.name, reason))
            elif self.root != self.myAddress:
                self.send(self.parent, Exiting(self.name, reason))
        self._shutting_down = True
        self._steps.clear()
        self._pending.clear()
        self._delayed.clear()
        for child in self.children:
            child.backoff = None
            if child.state == "restarting":
                child.state = "dead"
        for child in reversed(self.children):
            self._steps.append(_StopStep(child=child))
        self._steps.append(_CallStep(fn=self._exit_now))
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
        if child is None or child.address is None or child.state != "running":
            state = "no such child" if child is None else f"child is {child.state}"
            self.reply(
                request, sender, error=Failure("unavailable", f"{self.name}/{head}: {state}")
            )
        elif rest:
            self._add_watch(request, sender, child)  # its exit takes what is under it along
            payload = dataclasses.replace(request.payload, path=rest)
            self.send(
                child.address,
                dataclasses.replace(request, payload=payload, reply_to=request.reply_to or sender),
            )
        else:
            here(request, sender, child)

    def _locate(self, request: Request, sender: ActorAddress, child: Child) -> None:
        self._add_watch(request, sender, child)
        self.reply(request, sender, Located(child.spec.name, child.address, child.kind))

    def _restart_on_request(self, request: Request, sender: ActorAddress, child: Child) -> None:
        log.warning("%s: restarting %s on request", self.name, child.spec.name)
        self._steps.append(_StopStep(child=child))

        def done(failure: Failure | None) -> None:
            if failure is None:
                self.reply(request, sender, Ack(f"restarted {child.spec.name}"))
            else:
                self.reply(request, sender, error=failure)

        self._steps.append(_CallStep(fn=lambda: self._restart(child, done)))
        self._advance()

    def _add_child(self, request: Request, sender: ActorAddress, spec: ChildSpec) -> None:
        if self._named(spec.name) is not None:
            self.reply(
                request, sender, error=Failure("bad_request", f"child {spec.name!r} already exists")
            )
            return
        child = Child(spec)
        self.children.append(child)
        self._steps.append(_StartStep(child=child))
        self._steps.append(_CallStep(fn=lambda: self.reply(request, sender, Ack(spec.name))))
        self._advance()

    def _remove_child(self, request: Request, sender: ActorAddress, name: str) -> None:
        child = self._named(name)
        if child is None:
            self.reply(request, sender, error=Failure("unavailable", f"no child {name!r}"))
            return
        child.stop_granted = True
        self._steps.append(_StopStep(child=child))
        self._steps.append(
            _CallStep(fn=lambda: (self._forget(child), self.reply(request, sender, Ack(name))))
        )
        self._advance()

    # -- status of the sub-tree ---------------------------------------------------------------

    def _status(self, request: Request, sender: ActorAddress) -> None:
        """Ask every running child (supervisors for their sub-tree, workers for their load),
        and answer when all have, or when the query's budget is spent: a child that has not
        answered by then is reported ``unresponsive``. Always answered, always cleaned up."""
        query = request.payload
        budget = max(STATUS_MIN_S, query.timeout_s)
        nested = StatusQuery(max(STATUS_MIN_S, budget * STATUS_NESTED_FRACTION))
        gather = _Gather(request, sender)
        for child in self.children:
            if child.state == "running" and child.address is not None:
                cid = new_correlation_id()
                gather.asked[cid] = (child, child.address)
                self._gathers[cid] = gather
                self.send(child.address, Request(nested, cid, deadline=after(nested.timeout_s)))
        if not gather.asked:
            self._finish_gather(gather)
            return
        self._status_pending[gather.gid] = gather
        self.wakeupAfter(budget, payload=(_STATUS, gather.gid))

    def _gathered(self, reply: Reply) -> None:
        gather = self._gathers.pop(reply.correlation_id, None)
        if gather is None:
            return  # a late answer to a query already answered
        gather.answers[reply.correlation_id] = reply.payload if reply.ok else None
        if len(gather.answers) == len(gather.asked):
            self._finish_gather(gather)

    def _gone_from_gathers(self, child: Child) -> None:
        """A child that exited will not answer: the queries waiting for it need not wait."""
        for gather in list(self._status_pending.values()):
            for cid, (asked, _) in gather.asked.items():
                if asked is child and cid not in gather.answers:
                    self._gathers.pop(cid, None)
                    gather.answers[cid] = None
            if len(gather.answers) == len(gather.asked):
                self._finish_gather(gather)

    def _finish_gather(self, gather: _Gather) -> None:
        for cid in gather.asked:
            self._gathers.pop(cid, None)
        self._status_pending.pop(gather.gid, None)
        answers: dict[Child, Any] = {}
        unresponsive: set[Child] = set()
        for cid, (child, address) in gather.asked.items():
            if child.address is None or child.address != address:
                continue  # it exited or restarted meanwhile: its own state says so
            if cid in gather.answers:
                answers[child] = gather.answers[cid]
            elif child.state == "running":
                unresponsive.add(child)
        children = tuple(
            self.child_status(c, answers.get(c), c in unresponsive) for c in self.children
        )
        self.reply(
            gather.request,
            gather.sender,
            TreeStatus(self.name, self.strategy.value, children, self.tree_in_flight(children)),
        )

    def child_status(self, child: Child, answer: Any, unresponsive: bool) -> ChildStatus:
        return child.status(answer, unresponsive)

    def tree_in_flight(self, children: tuple[ChildStatus, ...]) -> int | None:
        """The requests held in this sub-tree: the sum of what the children reported."""
        known = [c.in_flight for c in children if c.in_flight is not None]
        return sum(known) if known else None
