"""The asyncio bridge: ``await`` a request to an actor without blocking the event loop.

An ``ActorSystem`` handle is not thread-safe and ``ask`` blocks, so a thread per ask would
cap throughput at the thread pool. Instead two threads each own one handle: the *sender*
``tell``s requests (with ``reply_to`` naming the listener) and the *listener* sits in
``listen`` and hands every reply back to the event loop, matched by correlation id. Replies
nobody waits for any more (their ask timed out) are counted and dropped; other messages
(a pool's :class:`~actors.messages.Members`) go to the handlers given to ``on_notice``.

Every Thespian message costs a few hundred microseconds of Python on each side, so the sender
sends whatever has queued up as one :class:`~actors.messages.Batch` per target.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorAddress, ActorSystem

from actors import deadlines, tracecontext
from actors.messages import (
    Cancel,
    Failure,
    FailureCode,
    Gone,
    Members,
    Reply,
    Request,
    Subscribe,
    Watch,
    WhereIs,
    batches,
    new_correlation_id,
    unpack,
)
from actors.route import PoolRoute
from actors.spec import MAX_ATTEMPTS
from actors.thespian_adapter import context_address, transmit

log = logging.getLogger("actors.bridge")

LOOKUP_TIMEOUT_S = 2.0
_SEND_TIMEOUT_S = 5.0
CANCEL_WAIT_S = 2.0  # a cancelled ask waits this long for its target to stop the work
_LISTEN_SLICE = datetime.timedelta(seconds=0.2)
_DRAIN = datetime.timedelta(0)
_BATCH = 64  # messages sent as one batch, replies handed to the loop at once
_WAKE = "bridge-closing"


class RemoteFailure(Exception):
    """The actor answered with a :class:`Failure`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.code}: {failure.message}")
        self.failure = failure


class AskTimeout(RemoteFailure):
    def __init__(self, timeout: float) -> None:
        super().__init__(Failure(FailureCode.TIMEOUT, f"no answer within {timeout:g} s"))


class Bridge:
    """Start it inside the running event loop; ``await bridge.ask(address, payload, timeout)``."""

    def __init__(self, asys: ActorSystem, max_pending: int = 10_000) -> None:
        self._asys = asys
        self._max_pending = max_pending
        # (target, message) to send; None: the sender thread ends
        self._outbox: queue.SimpleQueue[tuple[ActorAddress, Any] | None] = queue.SimpleQueue()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_address: ActorAddress | None = None
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._notice_handlers: list[Callable[[Any], None]] = []
        self.stale_replies = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _started_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the bridge is not started")
        return self._loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running.set()
        ready: asyncio.Future[None] = self._loop.create_future()
        for target, name in (
            (self._listen_main, "bridge-listener"),
            (self._send_main, "bridge-sender"),
        ):
            thread = threading.Thread(target=target, args=(ready,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        async with asyncio.timeout(10):
            await ready

    async def close(self, join_s: float = 5.0) -> None:
        """Fail every request still waiting, send what is queued, then stop both threads; the
        listener is woken by a message rather than waited for until its listen slice ends.
        ``join_s`` bounds the wait for each thread (they are daemon threads: when the actor
        system is already gone, a short wait is enough)."""
        self._running.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    RemoteFailure(Failure(FailureCode.UNAVAILABLE, "bridge closed"))
                )
        self._pending.clear()
        if self._listen_address is not None:
            self._outbox.put((self._listen_address, _WAKE))
        self._outbox.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, join_s)

    async def ask(
        self,
        target: ActorAddress,
        payload: Any,
        timeout: float,
        idempotent: bool = False,
        correlation_id: str | None = None,
    ) -> Any:
        """The reply payload; :class:`RemoteFailure` on a failure, :class:`AskTimeout`.
        A caller that may have to :meth:`fail` the request chooses its ``correlation_id``.

        The request carries its deadline, ``timeout`` from now (see :mod:`actors.deadlines`);
        inside the work for another request (an async actor's coroutine), ``timeout`` is first
        shortened to what is left of that request's deadline, and if nothing is left the
        request is not sent: ``timeout`` at once. An ask cancelled while it waits tells
        ``target`` (:class:`~actors.messages.Cancel`): the work it started stops too
        (:meth:`_cancel`)."""
        if not self._running.is_set():
            raise RemoteFailure(Failure(FailureCode.UNAVAILABLE, "bridge closed"))
        timeout = deadlines.bound(timeout)
        if timeout <= 0:
            raise RemoteFailure(
                Failure(FailureCode.TIMEOUT, "the deadline of the request being served has passed")
            )
        if len(self._pending) >= self._max_pending:
            raise RemoteFailure(Failure(FailureCode.OVERLOADED, "too many requests in flight"))
        request = Request(
            payload,
            correlation_id or new_correlation_id(),
            self._listen_address,
            idempotent,
            deadlines.after(timeout),
            tracecontext.carrier(),
        )
        future = self._started_loop().create_future()
        self._pending[request.correlation_id] = future
        self._outbox.put((target, request))
        try:
            async with asyncio.timeout(timeout):
                reply: Reply = await future
        except TimeoutError:
            raise AskTimeout(timeout) from None
        except asyncio.CancelledError:  # the asker's work was cancelled: so is the request's
            await self._cancel(target, request.correlation_id)
            raise
        finally:
            self._pending.pop(request.correlation_id, None)
        if reply.error is not None:
            raise RemoteFailure(reply.error)
        return reply.payload

    async def _cancel(self, target: ActorAddress, correlation_id: str) -> None:
        """Tell ``target`` to stop the work of ``correlation_id`` and wait, at most
        ``CANCEL_WAIT_S``, for its answer: an async actor answers once its work has stopped
        (and the work it asked others for), so a cancelled ask returns when nothing it
        started runs any more. (A synchronous actor answers when its work is done.)"""
        answered = self._started_loop().create_future()
        self._pending[correlation_id] = answered
        self._outbox.put((target, Cancel(correlation_id)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await answered

    def tell(self, target: ActorAddress, message: Any) -> None:
        """Send without waiting for an answer; never blocks the event loop."""
        self._outbox.put((target, message))

    def fail(self, correlation_ids: list[str], failure: Failure) -> None:
        """Answer those of these asks still waiting with ``failure`` now, as if the actor had
        (a reply that still comes is stale). On the event loop."""
        for cid in correlation_ids:
            future = self._pending.get(cid)
            if future is not None and not future.done():
                future.set_result(Reply(cid, None, failure))

    def on_notice(self, handler: Callable[[Any], None]) -> None:
        """Call ``handler`` on the event loop with every message that is not a reply."""
        self._notice_handlers.append(handler)

    # -- threads ------------------------------------------------------------------------------

    def _send_main(self, ready: asyncio.Future[None]) -> None:
        """Everything queued leaves together: one message per target (a :class:`Batch` where a
        target has several), all targets in flight at once. While a send waits for its
        acknowledgement, new requests queue up and form the next batch."""
        with self._asys.private() as ctx:
            while True:
                items = [self._outbox.get()]
                while len(items) < _BATCH:
                    try:
                        items.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                closing = None in items
                if closing:
                    items = items[: items.index(None)]
                outgoing = batches([item for item in items if item is not None])
                try:
                    failures = _send(ctx, outgoing)
                except Exception as exc:
                    log.error("bridge: cannot send: %s", exc)
                    failures = [Failure(FailureCode.UNAVAILABLE, f"cannot send: {exc}")] * len(
                        outgoing
                    )
                failed = [
                    Reply(request.correlation_id, None, failure)
                    for (_, message), failure in zip(outgoing, failures)
                    if failure is not None
                    for request in _requests(message)
                ]
                if failed:
                    self._started_loop().call_soon_threadsafe(self._resolve, failed)
                if closing:
                    return

    def _listen_main(self, ready: asyncio.Future[None]) -> None:
        with self._asys.private() as ctx:
            self._listen_address = context_address(ctx)
            self._started_loop().call_soon_threadsafe(_set_ready, ready)
            while self._running.is_set():
                message = ctx.listen(_LISTEN_SLICE)
                received: list[Any] = []
                while message is not None:
                    received.extend(m for m in unpack(message) if m != _WAKE)
                    message = ctx.listen(_DRAIN) if len(received) < _BATCH else None
                if received:
                    self._started_loop().call_soon_threadsafe(self._resolve, received)

    def _resolve(self, received: list[Any]) -> None:
        """Replies to their asks, other messages to the notice handlers, in arrival order."""
        for message in received:
            if not isinstance(message, Reply):
                for handler in self._notice_handlers:
                    handler(message)
                continue
            future = self._pending.get(message.correlation_id)
            if future is None or future.done():
                self.stale_replies += 1
            else:
                future.set_result(message)


def _requests(message: Any) -> list[Request]:
    return [m for m in unpack(message) if isinstance(m, Request)]


def _send(ctx: ActorSystem, outgoing: list[tuple[ActorAddress, Any]]) -> list[Failure | None]:
    """``tell`` to several targets at once, and report each dead target: Thespian's ``tell``
    drops a message to a dead address silently, and an address dies whenever its actor
    restarts (see :func:`actors.thespian_adapter.transmit`)."""
    failures: list[Failure | None] = []
    for (target, _), outcome in zip(outgoing, transmit(ctx, outgoing, _SEND_TIMEOUT_S)):
        if outcome is None:
            failures.append(None)
        elif outcome.kind == "dead":  # reached nobody
            failures.append(Failure(FailureCode.DEAD_ADDRESS, outcome.detail))
        elif outcome.kind == "error":
            log.error("bridge: cannot send to %s: %s", target, outcome.detail)
            failures.append(Failure(FailureCode.UNAVAILABLE, f"cannot send: {outcome.detail}"))
        else:  # late
            failures.append(Failure(FailureCode.UNAVAILABLE, outcome.detail))
    return failures


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


@dataclass(eq=False)
class _Actor:
    """A path resolved to one actor (not a pool): its address, and our requests it holds."""

    address: ActorAddress
    token: str  # of the Watch that tells us when it is gone
    held: set[str] = field(default_factory=set)

    def retire(self) -> list[str]:
        lost, self.held = list(self.held), set()
        return lost


Target = _Actor | PoolRoute


class Directory:
    """Ask actors by their path under the root; addresses change when actors restart.

    A path is resolved once through the supervisors (:class:`WhereIs`) and cached. When the
    actor behind an address has restarted the send fails at once (``dead_address``): the path
    is resolved again and the request, which reached nobody, is sent once more. A timeout also
    forgets the address (a request may vanish into a dying actor).

    Every resolution carries a :class:`Watch`: the supervisors that found the actor (and those
    on the way to it) tell this directory (:class:`Gone`) when it exits, and every request it
    held (for a pool: held by its workers, which die with it, or waiting in it) is answered
    ``worker_lost`` at once, not at its timeout; the path is resolved again at the next ask.

    A path that names a pool is not asked through the pool: the directory subscribes to the
    pool's workers and sends each request to one of them itself (:mod:`actors.route`), with
    the pool's rules (:mod:`actors.dispatch`): the least loaded worker, passing over one whose
    oldest request is overdue, ``overloaded`` past ``max_outstanding``, and a worker's exit
    answers its requests ``worker_lost`` or retries the idempotent ones (at most
    ``MAX_ATTEMPTS`` in all). While no worker takes work, requests go through the pool, which
    holds them until one is back.
    """

    def __init__(self, bridge: Bridge, root: ActorAddress) -> None:
        self.bridge = bridge
        self.root = root
        self._targets: dict[str, Target] = {}
        self._resolving: dict[str, asyncio.Task[Target]] = {}
        self._routes: list[PoolRoute] = []  # subscribed, for the pools' notices
        self._watched: dict[str, tuple[str, Target]] = {}  # watch token -> (path, target)
        bridge.on_notice(self._notice)

    async def ask(self, path: str, payload: Any, timeout: float, idempotent: bool = False) -> Any:
        """The answer of the actor at ``path`` (see the class); ``timeout`` is shortened to
        the deadline of the request being served, if any (:mod:`actors.deadlines`)."""
        loop = asyncio.get_running_loop()
        bounded = deadlines.bound(timeout)
        if bounded <= 0:
            raise RemoteFailure(
                Failure(FailureCode.TIMEOUT, "the deadline of the request being served has passed")
            )
        deadline = loop.time() + bounded
        target = await self._lookup(path)
        try:
            return await self._ask(path, target, payload, deadline, timeout, idempotent)
        except AskTimeout:
            if isinstance(target, _Actor):  # a pool's workers are kept up to date
                self._forget(path, target, dead=False)
            raise
        except RemoteFailure as exc:
            if exc.failure.code != FailureCode.DEAD_ADDRESS:
                raise
            self._forget(path, target, dead=True)
        return await self._ask(
            path, await self._lookup(path), payload, deadline, timeout, idempotent
        )

    async def _ask(
        self,
        path: str,
        target: Target,
        payload: Any,
        deadline: float,
        timeout: float,
        idempotent: bool,
    ) -> Any:
        loop = asyncio.get_running_loop()
        if isinstance(target, _Actor):
            try:
                return await self._ask_held(
                    target.held,
                    target.address,
                    payload,
                    deadline - loop.time(),
                    timeout,
                    idempotent,
                )
            finally:
                if self._targets.get(path) is not target and not target.held:
                    self._watched.pop(target.token, None)  # forgotten, and nothing left on it
        attempts = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AskTimeout(timeout)
            if not target.accepting():  # the pool holds the request until a worker is back
                return await self._ask_held(
                    target.waiting, target.pool, payload, remaining, timeout, idempotent
                )
            worker = target.pick()
            if worker is None:
                raise RemoteFailure(target.refusal(path))
            try:
                return await self._ask_held(
                    worker.held, worker.address, payload, remaining, timeout, idempotent
                )
            except RemoteFailure as exc:
                if exc.failure.code in (
                    FailureCode.DEAD_ADDRESS,
                    FailureCode.CRASHED,
                ):  # gone, or on its way out
                    worker.accepting = False  # until the pool's next list
                if exc.failure.code == FailureCode.DEAD_ADDRESS:  # reached nobody: another worker
                    continue
                attempts += 1
                # an idempotent request lost with its worker is retried on another one; not
                # when the whole pool is gone (retired): it has no other worker
                if not (
                    exc.failure.code == FailureCode.WORKER_LOST
                    and idempotent
                    and attempts < MAX_ATTEMPTS
                    and not target.retired
                ):
                    raise

    async def _ask_held(
        self,
        held: set[str] | dict[str, float],
        address: ActorAddress,
        payload: Any,
        remaining: float,
        timeout: float,
        idempotent: bool,
    ) -> Any:
        """Ask ``address``, our request counted in ``held`` (with the time it was sent, for
        a dict) while it is out, so that it can be failed if ``address`` is gone."""
        if remaining <= 0:
            raise AskTimeout(timeout)
        cid = new_correlation_id()
        if isinstance(held, dict):
            held[cid] = time.monotonic()
        else:
            held.add(cid)
        try:
            return await self.bridge.ask(address, payload, remaining, idempotent, cid)
        except AskTimeout:
            raise AskTimeout(timeout) from None
        finally:
            if isinstance(held, dict):
                held.pop(cid, None)
            else:
                held.discard(cid)

    # -- resolving paths --------------------------------------------------------------------

    async def _lookup(self, path: str) -> Target:
        target = self._targets.get(path)
        if target is not None:
            return target
        task = self._resolving.get(path)
        if task is None:  # one resolution per path, however many asks wait for it
            task = self._resolving[path] = asyncio.get_running_loop().create_task(
                self._resolve(path)
            )
            task.add_done_callback(lambda _: self._resolving.pop(path, None))
        return await asyncio.shield(task)

    async def _resolve(self, path: str) -> Target:
        watch = Watch(os.getpid(), new_correlation_id(), path)
        located = await self.bridge.ask(self.root, WhereIs(path, watch), LOOKUP_TIMEOUT_S)
        if located.kind != "pool":
            target: Target = _Actor(located.address, watch.token)
            self._watched[watch.token] = (path, target)
            self._targets[path] = target
            return target
        route = PoolRoute(located.address, watch.token)
        self._routes.append(route)  # notices may come before the answer is read
        self._watched[watch.token] = (path, route)
        try:
            members = await self.bridge.ask(
                located.address, Subscribe(os.getpid()), LOOKUP_TIMEOUT_S
            )
        except RemoteFailure:
            self._routes.remove(route)
            self._watched.pop(watch.token, None)
            raise
        self._notice(members)
        self._targets[path] = route
        return route

    def _forget(self, path: str, target: Target, dead: bool) -> None:
        """Stop using ``target`` for ``path``: its address is ``dead`` (a send found it so),
        or an ask of it timed out. A dead target's requests are lost with it: answered
        ``worker_lost`` now (a pool takes its workers with it). After a timeout an actor's
        other requests are left to their answers, or to its :class:`Gone`."""
        if self._targets.get(path) is target:
            del self._targets[path]
        elif isinstance(target, PoolRoute):
            return  # resolved again meanwhile: the old route was retired then
        if isinstance(target, PoolRoute):
            self._routes.remove(target)
        if dead or (isinstance(target, _Actor) and not target.held):
            self._watched.pop(target.token, None)
        if dead:
            lost = target.retire()
            if lost:
                self.bridge.fail(
                    lost,
                    Failure(FailureCode.WORKER_LOST, f"{path} exited with the request in flight"),
                )

    def _gone(self, gone: Gone) -> None:
        """What a path was resolved to has exited: every request it held is lost, now."""
        entry = self._watched.pop(gone.token, None)
        if entry is None:
            return  # an older resolution, already forgotten
        path, target = entry
        if self._targets.get(path) is target:
            del self._targets[path]
        if target in self._routes:
            self._routes.remove(target)
        lost = target.retire()
        if lost:
            log.warning("%s is gone: %d requests in flight answered worker_lost", path, len(lost))
            self.bridge.fail(
                lost, Failure(FailureCode.WORKER_LOST, f"{path} exited with the request in flight")
            )

    def _notice(self, message: Any) -> None:
        if isinstance(message, Gone):
            self._gone(message)
            return
        if not isinstance(message, Members):
            return
        for route in self._routes:
            if route.pool == message.pool:
                lost = route.update(message)
                if lost:
                    self.bridge.fail(
                        lost,
                        Failure(
                            FailureCode.WORKER_LOST, "the worker exited with the request in flight"
                        ),
                    )
