"""The let-it-crash base actor.

Thespian's own answer to a handler exception is to retry the handler once with a copy of the
message (doing every side effect twice), send a ``PoisonMessage`` and keep the actor alive with
whatever state the exception left behind. :class:`BaseActor` replaces that with Erlang's rule:
the exception is logged with its traceback, the requester gets a ``crashed``
:class:`~actors.messages.Failure` with its correlation id, and the actor exits, so its
supervisor restarts it in a fresh process with fresh state.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    PoisonMessage,
)

from actors import process_logs, tracecontext
from actors.deadlines import expired
from actors.lifeline import die_with_parent
from actors.messages import (
    Batch,
    Booting,
    Cancel,
    Failure,
    FailureCode,
    Heartbeat,
    Init,
    InitFailed,
    Ping,
    Pong,
    Reply,
    Request,
    Started,
    StatusQuery,
    Stop,
    StopMe,
    WorkDone,
    WorkerStatus,
    batches,
)

log = logging.getLogger("actors")


@dataclass(frozen=True)
class _Continue:
    """Sent to itself by an actor that put the rest of its work aside (see
    :meth:`BaseActor._receive_batch`): take it up again."""


def _urgent(msg: Any) -> bool:
    """The runtime's queries, answered ahead of work put aside: health checks and status."""
    return isinstance(msg, Request) and isinstance(msg.payload, (Ping, StatusQuery))


class RequestFailed(Exception):
    """Raise from ``handle`` to answer an expected error without crashing the actor.

    The Erlang ``{error, Reason}`` return: bad input or an unavailable dependency is the
    request's outcome, not a corrupted actor, so restarting would not help.
    """

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.failure = Failure(code, message, retry_after)

    @classmethod
    def of(cls, failure: Failure, message: str | None = None) -> RequestFailed:
        """Answer with ``failure`` (another actor's, passed on): the same code and
        ``retry_after``; ``message`` (with the context this actor adds) replaces its own."""
        return cls(
            failure.code, failure.message if message is None else message, failure.retry_after
        )


class BaseActor(Actor):  # type: ignore[misc]  # Thespian is untyped: Actor is Any
    """An actor that crashes on any handler exception and has a documented lifecycle.

    Lifecycle: the supervisor creates the actor and sends :class:`Init`; ``on_start(args)``
    runs and the actor answers :class:`Started` (or :class:`InitFailed` if ``on_start``
    raised, and exits). Application requests arrive as :class:`Request` envelopes and
    ``handle(payload)`` returns the reply payload. ``on_stop()`` runs before a graceful exit.
    ``observe(payload, seconds, error)`` is called after every handled request (telemetry).
    A :class:`Batch` is handled message by message, and the sends it causes leave as one
    message per target.
    """

    kind = "worker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid is not None:  # in a process of its own
            # SIGKILL with the parent: the children of a SIGKILLed supervisor would otherwise
            # live on as orphans that even survive ActorSystem.shutdown().
            die_with_parent(parent.pid, signal.SIGKILL)
        self.name: str = self.__class__.__name__
        self.path: str = self.name  # in the tree, from the root (Init.path)
        self.admin_port: int = 0
        self.parent: ActorAddress | None = None
        self.root: ActorAddress | None = None
        self._crashed = False
        self._stopped = False
        self._held: list[tuple[ActorAddress, Any]] | None = None
        self.expired_requests = 0  # requests dropped because they arrived after their deadline
        self._heartbeat_s = 0.0  # from Init: tell the supervisor we work, at most this often
        self._last_beat = 0.0
        # Work put aside to let the mailbox breathe (None: none), and whether it is being
        # taken up (its messages are handled, not put aside again).
        self._backlog: deque[tuple[Any, ActorAddress]] | None = None
        self._replaying = False

    # -- hooks for subclasses -------------------------------------------------------------

    def on_start(self, args: Any) -> None:
        """Acquire resources. Raising here reports :class:`InitFailed` and exits."""

    def on_stop(self) -> None:
        """Release resources before a graceful exit (not called on SIGKILL)."""

    def handle(self, payload: Any) -> Any:
        """Answer one request payload; raising crashes the actor."""
        raise NotImplementedError(f"{self.__class__.__name__} handles no {type(payload).__name__}")

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        """Messages that are neither requests nor lifecycle messages; raising crashes. A
        :class:`Cancel` has nothing to stop here: a request is handled whole, one at a time
        (an async actor's are not: :mod:`actors.async_actor`)."""
        if not isinstance(msg, Cancel):
            log.warning("%s ignored unexpected message %r", self.name, msg)

    def observe(self, payload: Any, seconds: float, error: Failure | None) -> None:
        """Called after each request is answered (or failed)."""

    @property
    def in_flight(self) -> int:
        """The requests this actor holds, reported to its supervisor's status query
        (:class:`WorkerStatus`). A synchronous actor answers the query between requests, so
        it holds none then; an actor that keeps requests open (an async actor's coroutines,
        a queue of its own) overrides this."""
        return 0

    def gauges(self) -> tuple[tuple[str, float], ...]:
        """Figures of the application's own, as (name, value), reported with the status
        (:class:`WorkerStatus`): whoever reads the tree's status sees them without a channel
        of their own. Read in the actor's thread; none by default."""
        return ()

    # -- sending ----------------------------------------------------------------------------

    def send(self, targetAddr: ActorAddress, msg: Any) -> None:
        """Thespian's ``send``, except while a :class:`Batch` is handled: then every send is
        held, and the batch's sends leave as one message per target when it is done."""
        if self._held is None:
            super().send(targetAddr, msg)
        else:
            self._held.append((targetAddr, msg))

    def _receive_batch(self, batch: Batch, sender: ActorAddress) -> None:
        """Each message in order, as if it had arrived alone; a crash on one answers it
        ``crashed`` and, the actor being crashed from then on, the rest of the batch too.

        A batch is one Thespian message: until it is done the actor reads nothing else and
        sends nothing (Thespian transmits between messages), so a batch of 64 renders would
        hold a health check for seconds. An actor whose supervisor checks its health
        (``heartbeat_s`` > 0) handles a batch for at most ``heartbeat_s``, then puts the rest
        aside, ahead of anything that arrives meanwhile, and takes it up again in its next
        message (:class:`_Continue`): in between, its sends go out and health checks and
        status queries are answered. The order of everything else is kept."""
        outermost = self._held is None
        if outermost:
            self._held = []
        started = time.monotonic()
        try:
            for i, message in enumerate(batch.messages):
                self.receiveMessage(message, sender)
                if (
                    outermost
                    and self._heartbeat_s
                    and i + 1 < len(batch.messages)
                    and time.monotonic() - started >= self._heartbeat_s
                ):
                    self._put_aside([(m, sender) for m in batch.messages[i + 1 :]])
                    break
        finally:
            if outermost:
                self._flush_held()

    def _flush_held(self) -> None:
        held, self._held = self._held or [], None
        for target, message in batches(held):
            super().send(target, message)

    def _put_aside(self, work: list[tuple[Any, ActorAddress]]) -> None:
        """Put ``work`` ahead of whatever was put aside before, and make sure it is taken up."""
        if self._backlog is None:
            self._backlog = deque()
            self.send(self.myAddress, _Continue())
        self._backlog.extendleft(reversed(work))

    def _take_up(self, all_of_it: bool = False) -> None:
        """Handle the work put aside, in order, for at most ``heartbeat_s`` (or all of it)."""
        outermost = self._held is None
        if outermost:
            self._held = []
        started = time.monotonic()
        self._replaying = True
        try:
            while self._backlog:
                message, sender = self._backlog.popleft()
                if isinstance(message, Batch):  # its messages one by one, sliced like the rest
                    self._backlog.extendleft(reversed([(m, sender) for m in message.messages]))
                    continue
                self.receiveMessage(message, sender)
                if (
                    not all_of_it
                    and self._backlog
                    and time.monotonic() - started >= self._heartbeat_s
                ):
                    self.send(self.myAddress, _Continue())
                    return
            self._backlog = None
        finally:
            self._replaying = False
            if outermost:
                self._flush_held()

    # -- replying ---------------------------------------------------------------------------

    def reply(
        self,
        request: Request,
        sender: ActorAddress,
        payload: Any = None,
        error: Failure | None = None,
    ) -> None:
        """Answer ``request`` at its ``reply_to`` (or its sender); tell a forwarding parent
        first, so that its books balance before the requester, answered, can ask again."""
        if request.reply_to is not None and sender == self.parent:
            self.send(self.parent, WorkDone(request.correlation_id))
        self.send(request.reply_to or sender, Reply(request.correlation_id, payload, error))

    # -- Thespian entry point ---------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if self._heartbeat_s:
            self._heartbeat()
        if isinstance(msg, _Continue):
            if self._backlog is not None:
                self._take_up()
            return
        if self._backlog is not None and not self._replaying and not _urgent(msg):
            if not isinstance(msg, ActorExitRequest):
                self._backlog.append((msg, sender))  # after the work put aside
                return
            self._take_up(all_of_it=True)  # Thespian ends the actor after this message
        if isinstance(msg, Batch):
            self._receive_batch(msg, sender)
        elif isinstance(msg, Init):
            self._init(msg, sender)
        elif isinstance(msg, ActorExitRequest):
            self._exit()
        elif isinstance(msg, Stop):
            self.stop_gracefully(msg, sender)
        elif self._crashed:
            if isinstance(msg, Request):
                self.reply(
                    msg, sender, error=Failure(FailureCode.CRASHED, f"{self.name} is restarting")
                )
        elif isinstance(msg, PoisonMessage):
            log.error("%s: a message it sent could not be handled: %s", self.name, msg.details)
        else:
            try:
                self._route_message(msg, sender)
            except Exception as exc:  # let it crash
                self._crash(msg, sender, exc)

    def _route_message(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Request):
            if expired(msg):
                self.drop_expired(msg, sender)
            else:
                self.handle_request(msg, sender)
        else:
            self.receive_other(msg, sender)

    def drop_expired(self, request: Request, sender: ActorAddress) -> None:
        """A request that arrived after its deadline is not handled: its asker has given up.
        It is answered ``timeout`` all the same (a forwarding pool balances its books; the
        asker, if it still listens, learns why), and the drop is counted."""
        self.expired_requests += 1
        log.info(
            "%s dropped a %s that arrived %.3f s after its deadline",
            self.name,
            type(request.payload).__name__,
            time.time() - (request.deadline or 0.0),  # set: the request expired
        )
        self.reply(
            request,
            sender,
            error=Failure(
                FailureCode.TIMEOUT,
                f"{self.name}: the request's deadline passed before it was handled",
            ),
        )

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        """Run ``handle`` in the request's span (a child of its sender's: see
        :mod:`actors.tracecontext`) and reply; an exception propagates and crashes the actor."""
        if isinstance(request.payload, StatusQuery):  # the runtime's, not the application's
            status = WorkerStatus(self.name, os.getpid(), self.in_flight, self.gauges())
            self.reply(request, sender, status)
            return
        if isinstance(request.payload, Ping):  # health checks too: never observed
            self.reply(request, sender, Pong(self.name, os.getpid()))
            return
        started = time.perf_counter()
        with tracecontext.handling(
            type(request.payload).__name__,
            self.name,
            request.correlation_id,
            request.trace_context,
        ) as span:
            try:
                result = self.handle(request.payload)
            except RequestFailed as failed:
                tracecontext.failed(span, failed.failure.code, failed.failure.message)
                self.reply(request, sender, error=failed.failure)
                self.observe(request.payload, time.perf_counter() - started, failed.failure)
                return
        self.reply(request, sender, result)
        self.observe(request.payload, time.perf_counter() - started, None)

    def _heartbeat(self) -> None:
        """Taking up a message is progress: tell the supervisor, at most every
        ``heartbeat_s``, so that its health check does not take a busy actor whose ping waits
        behind queued work for a hung one. (A single handler longer than the health timeout
        still goes unanswered: that one is hung, as far as anyone can tell.)"""
        now = time.monotonic()
        if now - self._last_beat >= self._heartbeat_s and self.parent is not None:
            self._last_beat = now
            # at once, even inside a Batch (whose sends are held until it is done: a batch of
            # 64 renders is one Thespian message of seconds)
            Actor.send(self, self.parent, Heartbeat(self.name))

    def _init(self, msg: Init, sender: ActorAddress) -> None:
        self.name, self.admin_port, self.parent = msg.name, msg.admin_port, sender
        self.path = msg.path or msg.name
        process_logs.enter(self.path)
        self.root = msg.root or self.myAddress
        self._heartbeat_s, self._last_beat = msg.heartbeat_s, time.monotonic()
        self.send(sender, Booting(msg.name, os.getpid()))
        try:
            self.on_start(msg.args)
        except Exception as exc:
            log.error("%s failed to start", self.name, exc_info=True)
            self._crashed = True
            self.send(sender, InitFailed(msg.name, f"{type(exc).__name__}: {exc}"))
            self.send(self.myAddress, ActorExitRequest())
            return
        # What the process holds now (its imports, the actor's resources) lives as long as it
        # does: out of the collector's sight, a full collection no longer walks it. With DSPy
        # loaded one took ~65 ms, stalling every thread of the actor, several times a minute.
        gc.freeze()
        self.announce_started()

    def announce_started(self) -> None:
        """Tell the parent we are up (a supervisor defers this until its children are)."""
        self.send(self.parent, Started(self.name, os.getpid(), self.kind))

    def stop_gracefully(self, msg: Stop, sender: ActorAddress) -> None:
        """Default ordered stop of a leaf: exit now (queued requests were already handled)."""
        self.send(self.myAddress, ActorExitRequest())

    def request_stop(self, reason: str = "normal") -> None:
        """Exit normally: the supervisor stops us and a ``transient`` child stays stopped."""
        if self.parent is not None:
            self.send(self.parent, StopMe(self.name, reason))

    def _crash(self, msg: Any, sender: ActorAddress, exc: BaseException) -> None:
        """The one record of a crash: its traceback and the type of the message that caused
        it (Thespian never sees the exception, so it logs nothing of its own)."""
        cause = type(getattr(msg, "payload", msg)).__name__
        log.error(
            "%s crashed on %s; exiting so its supervisor restarts it",
            self.name,
            cause,
            exc_info=exc,
            extra={"message_type": cause},
        )
        self._crashed = True
        if isinstance(msg, Request):
            self.reply(
                msg,
                sender,
                error=Failure(
                    FailureCode.CRASHED, f"{self.name} crashed: {type(exc).__name__}: {exc}"
                ),
            )
            self.observe(msg.payload, 0.0, Failure(FailureCode.CRASHED, str(exc)))
        self.send(self.myAddress, ActorExitRequest())

    def _exit(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.on_stop()
        except Exception:
            log.error("%s: on_stop raised", self.name, exc_info=True)
