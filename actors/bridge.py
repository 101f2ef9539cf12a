"""The asyncio bridge: ``await`` a request to an actor without blocking the event loop.

An ``ActorSystem`` handle is not thread-safe and ``ask`` blocks, so a thread per ask would
cap throughput at the thread pool. Instead two threads each own one handle: the *sender*
``tell``s requests (with ``reply_to`` naming the listener) and the *listener* sits in
``listen`` and hands every reply back to the event loop, matched by correlation id. Replies
nobody waits for any more (their ask timed out) are counted and dropped.
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

from actors.messages import Failure, Reply, Request, WhereIs

log = logging.getLogger("actors.bridge")

LOOKUP_TIMEOUT_S = 2.0
DEAD_ADDRESS = "dead_address"
_SEND_TIMEOUT_S = 5.0
_SEND_SLICE = datetime.timedelta(seconds=0.5)
_LISTEN_SLICE = datetime.timedelta(seconds=0.2)
_DRAIN = datetime.timedelta(0)
_BATCH = 64
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
        with self._asys.private() as ctx:
            while True:
                item = self._outbox.get()
                if item is None:
                    return
                target, message = item
                try:
                    failure = _send(ctx, target, message)
                except Exception as exc:
                    log.error("bridge: cannot send to %s: %s", target, exc)
                    failure = Failure("unavailable", f"cannot send: {exc}")
                if failure is not None and isinstance(message, Request):
                    self._loop.call_soon_threadsafe(self._resolve, [Reply(
                        message.correlation_id, None, failure)])

    def _listen_main(self, ready: asyncio.Future) -> None:
        with self._asys.private() as ctx:
            self._listen_address = ctx._systemBase.transport.myAddress  # Thespian 4.0.1
            self._loop.call_soon_threadsafe(_set_ready, ready)
            while self._running.is_set():
                message = ctx.listen(_LISTEN_SLICE)
                batch = []
                while message is not None and len(batch) < _BATCH:
                    if isinstance(message, Reply):
                        batch.append(message)
                    message = ctx.listen(_DRAIN) if len(batch) < _BATCH else None
                if batch:
                    self._loop.call_soon_threadsafe(self._resolve, batch)

    def _resolve(self, replies: list[Reply]) -> None:
        for reply in replies:
            future = self._pending.get(reply.correlation_id)
            if future is None or future.done():
                self.stale_replies += 1
            else:
                future.set_result(reply)


def _send(ctx: ActorSystem, target: ActorAddress, message: Any) -> Optional[Failure]:
    """``tell``, but report a dead target: Thespian's ``tell`` drops it silently, and an
    address dies whenever its actor restarts. Uses Thespian 4.0.1 internals (``tell``'s own
    steps) to read the transmit's outcome; a refused connection is known in under 1 ms."""
    base = ctx._systemBase
    watch = base._tx_to_actor(target, message)
    deadline = time.monotonic() + _SEND_TIMEOUT_S
    while base._run_transport(_SEND_SLICE, txonly=True):
        if time.monotonic() > deadline:
            return Failure("unavailable", f"could not send to {target} within "
                                          f"{_SEND_TIMEOUT_S:g} s")
    if watch.failed:
        return Failure(DEAD_ADDRESS, f"{target} is gone ({watch.failure})")
    return None


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
