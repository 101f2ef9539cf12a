"""The let-it-crash base actor.

Thespian's own answer to a handler exception is to retry the handler once with a copy of the
message (doing every side effect twice), send a ``PoisonMessage`` and keep the actor alive with
whatever state the exception left behind. :class:`BaseActor` replaces that with Erlang's rule:
the exception is logged with its traceback, the requester gets a ``crashed``
:class:`~actors.messages.Failure` with its correlation id, and the actor exits, so its
supervisor restarts it in a fresh process with fresh state.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, Optional

from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    PoisonMessage,
)

from actors.deadlines import expired
from actors.messages import (
    Batch,
    Failure,
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

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    Thespian forks every actor from its parent actor; when a supervisor is SIGKILLed its
    children would otherwise live on as orphans that even survive ``ActorSystem.shutdown()``.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() == 1:  # the parent died between fork and prctl
        os._exit(1)


class RequestFailed(Exception):
    """Raise from ``handle`` to answer an expected error without crashing the actor.

    The Erlang ``{error, Reason}`` return: bad input or an unavailable dependency is the
    request's outcome, not a corrupted actor, so restarting would not help.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.failure = Failure(code, message)


class BaseActor(Actor):
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
        die_with_parent()
        self.name: str = self.__class__.__name__
        self.admin_port: int = 0
        self.parent: Optional[ActorAddress] = None
        self.root: Optional[ActorAddress] = None
        self._crashed = False
        self._stopped = False
        self._held: Optional[list[tuple[ActorAddress, Any]]] = None
        self.expired_requests = 0  # requests dropped because they arrived after their deadline

    # -- hooks for subclasses -------------------------------------------------------------

    def on_start(self, args: Any) -> None:
        """Acquire resources. Raising here reports :class:`InitFailed` and exits."""

    def on_stop(self) -> None:
        """Release resources before a graceful exit (not called on SIGKILL)."""

    def handle(self, payload: Any) -> Any:
        """Answer one request payload; raising crashes the actor."""
        raise NotImplementedError(f"{self.__class__.__name__} handles no {type(payload).__name__}")

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        """Messages that are neither requests nor lifecycle messages; raising crashes."""
        log.warning("%s ignored unexpected message %r", self.name, msg)

    def observe(self, payload: Any, seconds: float, error: Optional[Failure]) -> None:
        """Called after each request is answered (or failed)."""

    @property
    def in_flight(self) -> int:
        """The requests this actor holds, reported to its supervisor's status query
        (:class:`WorkerStatus`). A synchronous actor answers the query between requests, so
        it holds none then; an actor that keeps requests open (an async actor's coroutines,
        a queue of its own) overrides this."""
        return 0

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
        ``crashed`` and, the actor being crashed from then on, the rest of the batch too."""
        outermost = self._held is None
        if outermost:
            self._held = []
        try:
            for message in batch.messages:
                self.receiveMessage(message, sender)
        finally:
            if outermost:
                held, self._held = self._held, None
                for target, message in batches(held):
                    super().send(target, message)

    # -- replying ---------------------------------------------------------------------------

    def reply(self, request: Request, sender: ActorAddress, payload: Any = None,
              error: Optional[Failure] = None) -> None:
        """Answer ``request`` at its ``reply_to`` (or its sender); tell a forwarding parent
        first, so that its books balance before the requester, answered, can ask again."""
        if request.reply_to is not None and sender == self.parent:
            self.send(self.parent, WorkDone(request.correlation_id))
        self.send(request.reply_to or sender, Reply(request.correlation_id, payload, error))

    # -- Thespian entry point ---------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
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
                self.reply(msg, sender, error=Failure("crashed", f"{self.name} is restarting"))
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
        log.info("%s dropped a %s that arrived %.3f s after its deadline", self.name,
                 type(request.payload).__name__, time.time() - request.deadline)
        self.reply(request, sender, error=Failure(
            "timeout", f"{self.name}: the request's deadline passed before it was handled"))

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        """Run ``handle`` and reply; an exception propagates and crashes the actor."""
        if isinstance(request.payload, StatusQuery):  # the runtime's, not the application's
            self.reply(request, sender, WorkerStatus(self.name, os.getpid(), self.in_flight))
            return
        if isinstance(request.payload, Ping):  # health checks too: never observed
            self.reply(request, sender, Pong(self.name, os.getpid()))
            return
        started = time.perf_counter()
        try:
            result = self.handle(request.payload)
        except RequestFailed as failed:
            self.reply(request, sender, error=failed.failure)
            self.observe(request.payload, time.perf_counter() - started, failed.failure)
            return
        self.reply(request, sender, result)
        self.observe(request.payload, time.perf_counter() - started, None)

    def _init(self, msg: Init, sender: ActorAddress) -> None:
        self.name, self.admin_port, self.parent = msg.name, msg.admin_port, sender
        self.root = msg.root or self.myAddress
        try:
            self.on_start(msg.args)
        except Exception as exc:
            log.error("%s failed to start:\n%s", self.name, traceback.format_exc())
            self._crashed = True
            self.send(sender, InitFailed(msg.name, f"{type(exc).__name__}: {exc}"))
            self.send(self.myAddress, ActorExitRequest())
            return
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
        log.error("%s crashed on %s; exiting so its supervisor restarts it:\n%s",
                  self.name, type(getattr(msg, "payload", msg)).__name__, traceback.format_exc())
        self._crashed = True
        if isinstance(msg, Request):
            self.reply(msg, sender, error=Failure("crashed", f"{self.name} crashed: "
                                                  f"{type(exc).__name__}: {exc}"))
            self.observe(msg.payload, 0.0, Failure("crashed", str(exc)))
        self.send(self.myAddress, ActorExitRequest())

    def _exit(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.on_stop()
        except Exception:
            log.error("%s: on_stop raised:\n%s", self.name, traceback.format_exc())
