"""The asyncio bridge: ``await`` a request to an actor without blocking the event loop.

An ``ActorSystem`` handle is not thread-safe and ``ask`` blocks, so a thread per ask would
cap throughput at the thread pool. Instead two threads each own one handle: the *sender*
``tell``s requests (with ``reply_to`` naming the listener) and the *listener* sits in
``listen`` and hands every reply back to the event loop, matched by correlation id. Replies
nobody waits for any more (their ask timed out) are counted and dropped.

Every Thespian message costs a few hundred microseconds of Python on each side, so the sender
sends whatever has queued up as one :class:`~actors.messages.Batch` per target.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import queue
import threading
import time
from typing import Any, Optional

from thespian.actors import ActorAddress, ActorSystem

from actors.messages import Failure, Reply, Request, WhereIs, batches, unpack

log = logging.getLogger("actors.bridge")

LOOKUP_TIMEOUT_S = 2.0
DEAD_ADDRESS = "dead_address"
_SEND_TIMEOUT_S = 5.0
_SEND_SLICE = datetime.timedelta(seconds=0.5)
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
        super().__init__(Failure("timeout", f"no answer within {timeout:g} s"))


class Bridge:
    """Start it inside the running event loop; ``await bridge.ask(address, payload, timeout)``."""

    def __init__(self, asys: ActorSystem, max_pending: int = 10_000) -> None:
        self._asys = asys
        self._max_pending = max_pending
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, asyncio.Future] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._listen_address: Optional[ActorAddress] = None
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stale_replies = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running.set()
        ready: asyncio.Future = self._loop.create_future()
        for target, name in ((self._listen_main, "bridge-listener"),
                             (self._send_main, "bridge-sender")):
            thread = threading.Thread(target=target, args=(ready,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        await asyncio.wait_for(ready, timeout=10)

    async def close(self) -> None:
        """Send what is queued, then stop both threads; the listener is woken by a message
        rather than waited for until its listen slice ends."""
        self._running.clear()
        if self._listen_address is not None:
            self._outbox.put((self._listen_address, _WAKE))
        self._outbox.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RemoteFailure(Failure("unavailable", "bridge closed")))
        self._pending.clear()

    async def ask(self, target: ActorAddress, payload: Any, timeout: float,
                  idempotent: bool = False) -> Any:
        """The reply payload; :class:`RemoteFailure` on a failure, :class:`AskTimeout`."""
        if len(self._pending) >= self._max_pending:
            raise RemoteFailure(Failure("overloaded", "too many requests in flight"))
        request = Request(payload, reply_to=self._listen_address, idempotent=idempotent)
        future = self._loop.create_future()
        self._pending[request.correlation_id] = future
        self._outbox.put((target, request))
        try:
            reply: Reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AskTimeout(timeout) from None
        finally:
            self._pending.pop(request.correlation_id, None)
        if reply.error is not None:
            raise RemoteFailure(reply.error)
        return reply.payload

    def tell(self, target: ActorAddress, message: Any) -> None:
        """Send without waiting for an answer; never blocks the event loop."""
        self._outbox.put((target, message))

    # -- threads ------------------------------------------------------------------------------

    def _send_main(self, ready: asyncio.Future) -> None:
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
                    items = items[:items.index(None)]
                outgoing = batches(items)
                try:
                    failures = _send(ctx, outgoing)
                except Exception as exc:
                    log.error("bridge: cannot send: %s", exc)
                    failures = [Failure("unavailable", f"cannot send: {exc}")] * len(outgoing)
                failed = [Reply(request.correlation_id, None, failure)
                          for (_, message), failure in zip(outgoing, failures)
                          if failure is not None
                          for request in _requests(message)]
                if failed:
                    self._loop.call_soon_threadsafe(self._resolve, failed)
                if closing:
                    return

    def _listen_main(self, ready: asyncio.Future) -> None:
        with self._asys.private() as ctx:
            self._listen_address = ctx._systemBase.transport.myAddress  # Thespian 4.0.1
            self._loop.call_soon_threadsafe(_set_ready, ready)
            while self._running.is_set():
                message = ctx.listen(_LISTEN_SLICE)
                replies: list[Reply] = []
                while message is not None:
                    replies.extend(m for m in unpack(message) if isinstance(m, Reply))
                    message = ctx.listen(_DRAIN) if len(replies) < _BATCH else None
                if replies:
                    self._loop.call_soon_threadsafe(self._resolve, replies)

    def _resolve(self, replies: list[Reply]) -> None:
        for reply in replies:
            future = self._pending.get(reply.correlation_id)
            if future is None or future.done():
                self.stale_replies += 1
            else:
                future.set_result(reply)


def _requests(message: Any) -> list[Request]:
    return [m for m in unpack(message) if isinstance(m, Request)]


def _send(ctx: ActorSystem, outgoing: list[tuple[ActorAddress, Any]]) -> list[Optional[Failure]]:
    """``tell`` to several targets at once, and report each dead target: Thespian's ``tell``
    drops a message to a dead address silently, and an address dies whenever its actor
    restarts. Uses Thespian 4.0.1 internals (``tell``'s own steps) to read each transmit's
    outcome; a refused connection is known in under 1 ms."""
    base = ctx._systemBase
    watches: list[Any] = []
    for target, message in outgoing:
        try:
            watches.append(base._tx_to_actor(target, message))
        except Exception as exc:
            log.error("bridge: cannot send to %s: %s", target, exc)
            watches.append(Failure("unavailable", f"cannot send: {exc}"))
    deadline = time.monotonic() + _SEND_TIMEOUT_S
    late = None
    while base._run_transport(_SEND_SLICE, txonly=True):
        if time.monotonic() > deadline:
            late = Failure("unavailable", f"could not send within {_SEND_TIMEOUT_S:g} s")
            break
    return [watch if isinstance(watch, Failure) else
            Failure(DEAD_ADDRESS, f"{target} is gone ({watch.failure})") if watch.failed else
            late for (target, _), watch in zip(outgoing, watches)]


def _set_ready(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)


class Directory:
    """Ask actors by their path under the root; addresses change when actors restart.

    An address is resolved once through the supervisors (:class:`WhereIs`) and cached. When
    the actor behind it has restarted the send fails at once (``dead_address``): the address
    is resolved again and the request, which reached nobody, is sent once more. A timeout
    also forgets the address (a request may vanish into a dying actor).
    """

    def __init__(self, bridge: Bridge, root: ActorAddress) -> None:
        self.bridge = bridge
        self.root = root
        self._addresses: dict[str, ActorAddress] = {}

    async def lookup(self, path: str) -> ActorAddress:
        address = self._addresses.get(path)
        if address is None:
            located = await self.bridge.ask(self.root, WhereIs(path), LOOKUP_TIMEOUT_S)
            address = self._addresses[path] = located.address
        return address

    async def ask(self, path: str, payload: Any, timeout: float, idempotent: bool = False) -> Any:
        address = await self.lookup(path)
        try:
            return await self.bridge.ask(address, payload, timeout, idempotent)
        except AskTimeout:
            self._addresses.pop(path, None)
            raise
        except RemoteFailure as exc:
            if exc.failure.code != DEAD_ADDRESS:
                raise
            self._addresses.pop(path, None)
        return await self.bridge.ask(await self.lookup(path), payload, timeout, idempotent)
