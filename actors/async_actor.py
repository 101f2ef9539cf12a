"""The async-actor primitive: one actor process holds many concurrent I/O calls.

The actor runs an asyncio loop in a helper thread. ``handle`` returns a coroutine; the
actor schedules it on the loop with ``run_coroutine_threadsafe`` and returns at once, so its
mailbox keeps flowing. When the coroutine finishes, the loop thread answers the requester
itself through a :class:`~actors.bridge.Bridge` on that loop (an ``ActorSystem`` handle is not
thread-safe, so the loop never shares the actor's). Coroutines ask other actors, found by path
from the root, with ``await self.ask(path, payload, timeout)``. In-flight work is bounded by
``max_in_flight``; past it a request is refused
with an ``overloaded`` failure instead of queueing without end.

An exception inside a coroutine fails that request only (it is an I/O outcome, logged with its
traceback); an exception in the synchronous part of ``handle`` still crashes the actor.

Deadlines: a coroutine serving a request with a ``deadline`` is cancelled when it passes (the
request is answered ``timeout``: the work is abandoned, never finished after its asker gave
up), and every ask it makes is bounded by that deadline less ``reply_margin_s``, the time
left for the answer's way back (:mod:`actors.deadlines`): whatever a sub-request starts, it
starts early enough for its answer to be used.

Cancellation: a :class:`~actors.messages.Cancel` naming a request being served cancels its
coroutine (the asks it awaits send their own ``Cancel`` on, :mod:`actors.bridge`); the request
is answered ``cancelled``. A ``Cancel`` that overtakes its request is remembered (a bounded
number of them): the request, when it comes, is answered ``cancelled`` unstarted.

Health checks: the supervisor's pings are answered by the actor's own thread, which only
schedules work, so a busy async actor always answers them.
Because the loop thread exists, an async actor must stay a leaf: forking a process that has
threads can deadlock, so it creates no children.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ActorSystem

from actors import deadlines, tracecontext
from actors.base import BaseActor, RequestFailed
from actors.bridge import Bridge, Directory
from actors.messages import (
    Cancel,
    Failure,
    FailureCode,
    Ping,
    Reply,
    Request,
    StatusQuery,
    Stop,
    WorkDone,
)

log = logging.getLogger("actors.async")

_DRAIN_POLL_S = 0.02
_EARLY_CANCELS = 1024  # cancels remembered for requests not arrived yet (sent just before)


@dataclass(frozen=True)
class _Loop:
    """An async actor's event loop, the thread that runs it, and what lives on it."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    bridge: Bridge
    directory: Directory


class AsyncActor(BaseActor):
    """A leaf actor whose ``handle`` may return a coroutine. Set ``max_in_flight`` in
    ``on_start`` (default 64), and ``blocking_threads`` to bound the loop's thread pool for
    blocking calls (``asyncio.to_thread``; None: one per request in flight; threads are made as
    they are first needed, and calls beyond the bound wait for one)."""

    max_in_flight = 64
    blocking_threads: int | None = None
    reply_margin_s = 0.25  # sub-asks end this long before the served request's deadline

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: _Loop | None = None  # made on the first coroutine
        # Written by one thread each, read by the other: no lock needed under the GIL.
        self._submitted = 0
        self._completed = 0
        self._draining = False
        # On the loop's thread only: the coroutines serving requests, by correlation id, and
        # the ids cancelled (those running, and those not arrived yet: oldest dropped first).
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._cancelled: dict[str, None] = {}

    @property
    def in_flight(self) -> int:
        """Coroutines running (reported in :class:`~actors.messages.WorkerStatus`)."""
        return self._submitted - self._completed

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        if isinstance(request.payload, (Ping, StatusQuery)):  # answered even when busy
            super().handle_request(request, sender)
            return
        if self._draining:
            self.reply(
                request, sender, error=Failure(FailureCode.UNAVAILABLE, f"{self.name} is stopping")
            )
            return
        if self.in_flight >= self.max_in_flight:
            self.reply(
                request,
                sender,
                error=Failure(
                    FailureCode.OVERLOADED, f"{self.name} holds {self.max_in_flight} requests"
                ),
            )
            return
        started = time.perf_counter()
        try:
            result = self.handle(request.payload)
        except RequestFailed as failed:
            self.reply(request, sender, error=failed.failure)
            return
        if not inspect.isawaitable(result):
            self.reply(request, sender, result)
            self.observe(request.payload, time.perf_counter() - started, None)
            return
        self._ensure_loop()
        self._submitted += 1
        forwarded = request.reply_to is not None and sender == self.parent
        asyncio.run_coroutine_threadsafe(
            self._run(result, request, request.reply_to or sender, forwarded, started),
            self._started().loop,
        )

    async def _run(
        self,
        awaitable: Any,
        request: Request,
        target: ActorAddress,
        forwarded: bool,
        started: float,
    ) -> None:
        error: Failure | None = None
        payload: Any = None
        deadline = request.deadline
        remaining = deadlines.left(deadline)
        cid = request.correlation_id
        task = asyncio.current_task()
        if task is not None:
            self._serving[cid] = task
        with tracecontext.handling(
            type(request.payload).__name__, self.name, cid, request.trace_context
        ) as span:
            try:
                if cid in self._cancelled:  # its Cancel came first
                    if inspect.iscoroutine(awaitable):
                        awaitable.close()
                    raise asyncio.CancelledError
                if deadline is None or remaining is None:
                    payload = await awaitable
                else:
                    # the current deadline of this task and of every task it starts (to_thread,
                    # gather): their asks end in time for the answer to be of use
                    deadlines.serve(deadline - min(self.reply_margin_s, remaining / 4))
                    async with asyncio.timeout(max(0.0, remaining)):
                        payload = await awaitable
            except TimeoutError as exc:
                left = deadlines.left(deadline)
                if left is None or left > 0.001:
                    error = self._failed(request, exc)  # the handler's own, not the deadline
                else:
                    error = Failure(
                        FailureCode.TIMEOUT,
                        f"{self.name}: the request's deadline passed; its work was abandoned",
                    )
                    log.info(
                        "%s: request %s abandoned at its deadline",
                        self.name,
                        request.correlation_id,
                    )
            except RequestFailed as failed:
                error = failed.failure
            except Exception as exc:
                error = self._failed(request, exc)
            except asyncio.CancelledError:
                if cid not in self._cancelled:
                    raise  # not by a Cancel: the loop is closing
                error = Failure(FailureCode.CANCELLED, f"{self.name}: cancelled by its asker")
                log.info("%s: request %s cancelled by its asker", self.name, cid)
            finally:
                self._serving.pop(cid, None)
                self._cancelled.pop(cid, None)
            if error is not None:
                tracecontext.failed(span, error.code, error.message)
        bridge = self._started().bridge
        if forwarded:  # first, as in BaseActor.reply
            bridge.tell(self.parent, WorkDone(request.correlation_id))
        bridge.tell(target, Reply(request.correlation_id, payload, error))
        self._completed += 1
        self.observe(request.payload, time.perf_counter() - started, error)

    def _failed(self, request: Request, exc: BaseException) -> Failure:
        cause = type(request.payload).__name__
        log.error(
            "%s: request %s (%s) failed",
            self.name,
            request.correlation_id,
            cause,
            exc_info=exc,
            extra={"message_type": cause},
        )
        return Failure(FailureCode.ERROR, f"{type(exc).__name__}: {exc}")

    async def ask(self, path: str, payload: Any, timeout: float, idempotent: bool = False) -> Any:
        """Ask the actor at ``path`` under the root (see :class:`~actors.bridge.Directory`);
        inside the work for a request, ``timeout`` is bounded by that request's deadline."""
        return await self._started().directory.ask(path, payload, timeout, idempotent)

    def _started(self) -> _Loop:
        if self._loop is None:
            raise RuntimeError(f"{self.name}: its event loop is not running")
        return self._loop

    def _ensure_loop(self) -> None:
        if self._loop is not None:
            return
        ready: queue.Queue[_Loop | Exception] = queue.Queue()
        thread = threading.Thread(
            target=self._loop_main, args=(ready,), name=f"{self.name}-loop", daemon=True
        )
        thread.start()
        started = ready.get(timeout=10)
        if isinstance(started, Exception):
            raise RuntimeError(f"{self.name}: async loop failed to start: {started}")
        self._loop = started

    def _loop_main(self, ready: queue.Queue[_Loop | Exception]) -> None:
        try:
            asys = ActorSystem(
                "multiprocTCPBase", {"Admin Port": self.admin_port}, transientUnique=True
            )
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            # Blocking calls (asyncio.to_thread) may be as many as the requests in flight; the
            # default executor's min(32, cores + 4) threads would queue them on 2 cores. An actor
            # whose calls are short bounds them (blocking_threads). (Threads are made on demand:
            # a pool sized for a peak costs nothing until the peak comes.)
            loop.set_default_executor(
                ThreadPoolExecutor(
                    self.blocking_threads or self.max_in_flight, f"{self.name}-blocking"
                )
            )
            bridge = Bridge(asys)
            loop.run_until_complete(bridge.start())
            directory = Directory(bridge, self.root)
        except Exception as exc:
            ready.put(exc)
            return
        ready.put(_Loop(loop, threading.current_thread(), bridge, directory))
        loop.run_forever()

    def stop_gracefully(self, msg: Stop, sender: ActorAddress) -> None:
        """Refuse new work, let in-flight calls finish (the supervisor's timeout bounds it)."""
        self._draining = True
        if self.in_flight:
            self.wakeupAfter(_DRAIN_POLL_S, payload="drain")
        else:
            self.send(self.myAddress, ActorExitRequest())

    def _cancel(self, correlation_id: str) -> None:
        """On the loop: cancel the coroutine serving ``correlation_id``, or remember the
        cancel for a request still on its way."""
        self._cancelled[correlation_id] = None
        task = self._serving.get(correlation_id)
        if task is not None:
            task.cancel()
        elif len(self._cancelled) > _EARLY_CANCELS:
            del self._cancelled[next(iter(self._cancelled))]

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Cancel):
            if self._loop is not None:
                self._loop.loop.call_soon_threadsafe(self._cancel, msg.correlation_id)
        elif getattr(msg, "payload", None) == "drain":
            self.stop_gracefully(Stop(), sender)
        else:
            super().receive_other(msg, sender)

    def on_stop(self) -> None:
        """Close the bridge before the loop: it may still hold the replies and ``WorkDone`` of
        finished calls, and the pool must hear ``WorkDone`` before ``ChildActorExited``."""
        started = self._loop
        if started is not None:
            loop = started.loop
            asyncio.run_coroutine_threadsafe(started.bridge.close(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            started.thread.join(timeout=2)
