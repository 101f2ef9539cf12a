"""``GET /v1/tasks/{id}/events``: a task's progress as Server-Sent Events, as it happens.

Each message: ``id: n`` (its position: ``Last-Event-ID: n``, or ``?last_event_id=n``, resumes
with exactly the messages after the n-th), ``event: <type>`` and ``data: <one-line JSON>``.
The log's reader (:mod:`memesys.storage.progress`, handed in by the daemon) finds them; the
task's last message is filled in here from its record, as ``GET /v1/tasks/{id}`` reads it:
``completed`` with the meme as ``GET /v1/memes/{id}`` serves it, ``failed`` with the task's
error as a client sees it, ``cancelled``; then the stream ends. A client that comes late gets
the whole history at once, then the end. While the task waits, a ``: keep-alive`` comment
every ``gateway.event_keepalive_s``.

Bounded: ``gateway.max_event_streams`` streams at once (past it 503 ``overloaded``; they are
not counted against ``max_in_flight``, :mod:`memesys.http.middleware`), each open at most
``event_stream_max_s``; every stream ends when the daemon stops (the client resumes).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from memesys.config import GatewayConfig
from memesys.domain.ids import valid_id
from memesys.domain.progress import CANCELLED, COMPLETED, ENDS, EVENT_ID_PATTERN, FAILED, Shown
from memesys.errors import ErrorCode, MemesysError
from memesys.http.responses import error, public_failure
from memesys.http.validation import shown

log = logging.getLogger("memesys.http.progress")

KEEP_ALIVE = b": keep-alive\n\n"

FetchTask = Callable[[str], Awaitable[dict[str, Any] | None]]


class EventSource(Protocol):
    """Where a task's messages come from (:class:`memesys.storage.progress.TaskEvents`)."""

    def follow(self, task_id: str, after: int, wait_s: float) -> AsyncIterator[Shown | None]:
        """The messages after the ``after``-th until the last; None: ``wait_s`` passed."""
        ...

    async def close(self) -> None: ...


class ProgressStreams:
    """The route's handler; ``fetch`` reads a task as ``GET /v1/tasks/{id}`` does."""

    def __init__(self, cfg: GatewayConfig, events: EventSource, fetch: FetchTask) -> None:
        self.cfg = cfg
        self.events = events
        self.fetch = fetch
        self.open = 0
        self.closing = asyncio.Event()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        after = _last_event_id(request)
        if isinstance(after, web.Response):
            return after
        task = await self.fetch(task_id) if valid_id(task_id) else None
        if task is None:
            return error(ErrorCode.NOT_FOUND, f"no task {shown(task_id)}")
        if self.open >= self.cfg.max_event_streams:
            return error(
                ErrorCode.OVERLOADED,
                f"{self.cfg.max_event_streams} event streams are open; retry later",
            )
        self.open += 1
        try:
            return await self._serve(request, task_id, after)
        finally:
            self.open -= 1

    async def _serve(self, request: web.Request, task_id: str, after: int) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a proxy passes each message on at once
            }
        )
        await response.prepare(request)
        pump = asyncio.ensure_future(self._pump(response, task_id, after))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            # the stream's time is up, or the daemon stops: the client resumes
            await asyncio.wait(
                {pump, closing},
                timeout=self.cfg.event_stream_max_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (pump, closing):
                task.cancel()
        try:
            await pump
        except asyncio.CancelledError:
            pass
        except ConnectionError:
            return response  # the client went away
        except MemesysError as exc:  # the log or the store failed: the client resumes
            log.warning("task %s: its event stream ended early: %s", task_id, exc)
        await response.write_eof()
        return response

    async def _pump(self, response: web.StreamResponse, task_id: str, after: int) -> None:
        async for message in self.events.follow(task_id, after, self.cfg.event_keepalive_s):
            if message is None:
                await response.write(KEEP_ALIVE)
            elif message.type in ENDS:
                ending = Shown(message.n, *_ending(task_id, await self.fetch(task_id)))
                await response.write(ending.encoded())
                return
            else:
                await response.write(message.encoded())

    async def close(self, app: web.Application) -> None:
        """On the application's shutdown: end every stream (they would hold the exit)."""
        self.closing.set()
        await self.events.close()


def _ending(task_id: str, task: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The task's last message, from its record (None: gone, as a failure)."""
    status = None if task is None else task["status"]
    if task is not None and status == "succeeded":
        return COMPLETED, {"meme": task.get("meme")}
    if status == "cancelled":
        return CANCELLED, {}
    failure = {} if task is None else task.get("error") or {}
    code, message = public_failure(
        failure.get("code", ""), failure.get("message", "the task is gone"), f"task {task_id}"
    )
    return FAILED, {"code": code.value, "message": message}


def _last_event_id(request: web.Request) -> int | web.Response:
    """Where to resume: the ``Last-Event-ID`` header, else ``?last_event_id=``; 0: from the
    start. Each one sent must be an event id (:data:`EVENT_ID_PATTERN`), the overridden query
    too: what the document declares of each parameter holds whatever the other says."""
    sent = {
        "Last-Event-ID": request.headers.get("Last-Event-ID"),
        "last_event_id": request.query.get("last_event_id"),
    }
    for name, raw in sent.items():
        if raw is not None and not re.fullmatch(EVENT_ID_PATTERN, raw):
            return error(
                ErrorCode.INVALID_FIELD,
                f"{name}: must be an event id of this stream, not {shown(raw)}",
                field=name,
            )
    return int(next((raw for raw in sent.values() if raw is not None), "0"))
