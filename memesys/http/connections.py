"""Connections that send nothing useful are closed: the request-head (header) timeout.

aiohttp parses a request's head as bytes arrive and has no deadline for it: a client that
opens a connection and stays silent, or trickles its headers a byte at a time, would hold a
socket (and, at a thousand of them, the file descriptors) for as long as it likes. A
:class:`ConnectionWatch` gives each connection ``header_timeout_s`` to deliver a complete
request head, counted from when the connection opened or from the end of its previous request
(the idle keep-alive time is the same bound), and closes it without an answer past that. A
connection whose request is being served is never closed by it; the body has its own deadline
(``body_timeout_s``, in :mod:`memesys.http.middleware`).

The middleware marks each request's connection busy and idle again; a sweep every
``min(1 s, header_timeout_s / 4)`` closes the idle ones that are overdue, so a connection is
closed between ``header_timeout_s`` and ``header_timeout_s`` + one sweep after its last
request (or its opening).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("memesys.http")

MAX_SWEEP_S = 1.0
CLOSED = float("inf")


class ConnectionWatch:
    def __init__(
        self,
        header_timeout_s: float,
        on_close: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.on_close = on_close
        self.clock = clock
        self._state: dict[Any, list[float]] = {}  # connection -> [requests in progress, since]
        self._task: asyncio.Task[None] | None = None

    def busy(self, connection: Any) -> None:
        """A request's head has arrived on ``connection``: it is not idle until :meth:`idle`."""
        self._state.setdefault(connection, [0, self.clock()])[0] += 1

    def idle(self, connection: Any) -> None:
        """The request on ``connection`` is answered: its next head is due within the timeout."""
        state = self._state.get(connection)
        if state is not None:
            state[0] -= 1
            state[1] = self.clock()

    def watch(self, server: web.Server) -> None:
        """Sweep ``server``'s connections (``AppRunner.server``) until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._sweep(server), name="connection-watch")

    async def stop(self, app: web.Application | None = None) -> None:
        """Stop sweeping (an ``on_cleanup`` handler of the gateway's application)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _sweep(self, server: web.Server) -> None:
        period = min(MAX_SWEEP_S, self.header_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            self.sweep(server.connections)

    def sweep(self, connections: list[Any]) -> int:
        """Close the connections idle for ``header_timeout_s``; returns how many. A connection
        seen for the first time counts as opened now; closed ones are forgotten."""
        now = self.clock()
        seen: dict[Any, list[float]] = {}
        closed = 0
        for connection in connections:
            state = self._state.get(connection) or [0, now]
            seen[connection] = state
            if state[0] <= 0 and now - state[1] >= self.header_timeout_s:
                connection.force_close()
                state[0] = CLOSED  # until aiohttp forgets it: never closed (or counted) twice
                closed += 1
                self.on_close()
        self._state = seen
        if closed:
            log.debug(
                "closed %d connections that sent no complete request head within %g s",
                closed,
                self.header_timeout_s,
            )
        return closed

    @property
    def tracked(self) -> int:
        return len(self._state)
