"""The log's side of a task's event stream (``GET /v1/tasks/{id}/events``,
:mod:`memesys.http.progress`): a task's events and its meme's, merged in the order they
happened, as the stream's messages.

It follows the task's own stream (``task:<id>``: ``task_queued``, ``task_running``, then
``task_succeeded``, ``task_failed`` or ``task_cancelled``) and, from each ``task_running`` on,
the stream of the meme that lease is making (the ledger names the meme when it leases the task,
in the event's ``making``: :mod:`memesys.tree.tasks`), so it knows where the meme's events go
before the first one is appended. Every entry of both has a stream id of the log's one sequence
(:mod:`memesys.storage.eventlog`): merged by id, they are in the order they happened. Shown are
the task's statuses (its last one as ``completed``, ``failed`` or ``cancelled``, which ends the
stream) and the meme's stages (``format_chosen``, ``caption_written``, ``verdict``,
``scored``, ``refined``, ``rendered``), with their personal fields opened with the meme's key. A
meme's own ``failed`` is not shown: its task may be queued again.

A message's position (1, 2, ...) is exact: the history never changes below what has been
appended, so the n-th message is always the same and a resume after it skips exactly n.

Reading: a non-blocking ``XREAD`` of every stream followed, from the cursors of the entries
handled (one read of them all at one moment: nothing is merged out of order); when there is
nothing, a blocking ``XREAD`` from the same cursors waits for the next entry, at most
``wait_s`` (then a keep-alive, once the task's record says it is still open).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import redis
import redis.asyncio

from memesys.domain.events import (
    CAPTION_WRITTEN,
    FORMAT_CHOSEN,
    REFINED,
    RENDERED,
    SCORED,
    TASK,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_QUEUED,
    TASK_RUNNING,
    TASK_SUCCEEDED,
    VERDICT,
)
from memesys.domain.formats import UnknownFormat, get_format
from memesys.domain.ids import valid_id
from memesys.domain.progress import CANCELLED, COMPLETED, ENDS, FAILED, Shown
from memesys.storage.errors import StoreError
from memesys.storage.projections import Keys, meme_entity, task_entity
from memesys.storage.records import OPEN_STATES, parse_json
from memesys.storage.sealing import Sealer

TASK_ENDS = {TASK_SUCCEEDED: COMPLETED, TASK_FAILED: FAILED, TASK_CANCELLED: CANCELLED}
MEME_SHOWN = frozenset({FORMAT_CHOSEN, CAPTION_WRITTEN, VERDICT, SCORED, REFINED, RENDERED})
SCORES = ("humor", "clarity", "creativity", "shareability")


class _Meme:
    """What the stream knows of one meme being made: its key (for its personal fields) and
    the format of its caption (the names of the slots its texts fill)."""

    def __init__(self, meme_id: str) -> None:
        self.entity = meme_entity(meme_id)
        self.key: bytes | None = None
        self.format = ""


class TaskEvents:
    """Follows tasks' events on an asyncio client of the log's Redis."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.keys = Keys(prefix)
        # no socket timeout: a blocking XREAD is bounded by its own BLOCK
        self.client = redis.asyncio.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=timeout_s
        )

    async def follow(self, task_id: str, after: int, wait_s: float) -> AsyncIterator[Shown | None]:
        """The task's messages after the ``after``-th, as they are appended, until its last
        status; None when ``wait_s`` passed without one (time for a keep-alive)."""
        task_stream = self.keys.stream(task_entity(task_id))
        cursors: dict[str, str] = {task_stream: "0-0"}
        memes: dict[str, _Meme] = {}
        n = 0
        while True:
            entries = await self._read(cursors)
            if not entries:
                if await self._wait(cursors, wait_s):
                    continue
                status = await self._status(task_id)
                if status in OPEN_STATES:
                    yield None
                    continue
                # finished without its last event in the log (its record set aside as
                # corrupt, or expired): the record says how
                if status is not None:
                    n += 1
                    if n > after:
                        yield Shown(n, TASK_ENDS.get(f"{TASK}{status}", FAILED))
                return
            for stream, sid, raw in entries:
                cursors[stream] = sid
                kind = raw[b"type"].decode()
                follow = None
                if stream == task_stream:
                    message = _task_message(kind)
                    making = json.loads(raw[b"data"]).get("making")
                    if kind == TASK_RUNNING and isinstance(making, str) and valid_id(making):
                        follow = making
                elif kind in MEME_SHOWN:
                    message = await self._meme_message(memes[stream], kind, raw)
                else:
                    message = None
                if message is not None:
                    n += 1
                    if n > after:
                        yield Shown(n, *message)
                    if message[0] in ENDS:
                        return
                new = self.keys.stream(meme_entity(follow)) if follow else None
                if new is not None and new not in cursors:
                    # its events come after this one: read again with its stream, before
                    # any later entry of the task's stream is shown
                    cursors[new], memes[new] = "0-0", _Meme(cast(str, follow))
                    break

    async def _read(self, cursors: dict[str, str]) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Every entry after the cursors, of every stream at one moment, in the log's order."""
        with _reading("the task's events"):
            reply = cast(list[Any], await self.client.xread(cast(Any, cursors)))
        entries: list[tuple[str, str, dict[bytes, bytes]]] = [
            (key.decode(), sid.decode(), raw) for key, rows in reply or () for sid, raw in rows
        ]
        return sorted(entries, key=lambda e: tuple(int(part) for part in e[1].split("-")))

    async def _wait(self, cursors: dict[str, str], wait_s: float) -> bool:
        """Until an entry comes after the cursors (True) or ``wait_s`` passes (False)."""
        with _reading("the task's events"):
            block = max(1, int(wait_s * 1000))
            return bool(await self.client.xread(cast(Any, cursors), count=1, block=block))

    async def _status(self, task_id: str) -> str | None:
        """The status of the task's record; None when it is gone (expired) or unreadable."""
        with _reading(f"task {task_id}"):
            raw = cast(bytes | None, await self.client.get(self.keys.task(task_id)))
        record, problem = parse_json(raw) if raw is not None else (None, "missing")
        if problem is not None or not isinstance(record, dict):
            return None
        status = record.get("status")
        return status if isinstance(status, str) else None

    async def _meme_message(
        self, meme: _Meme, kind: str, raw: dict[bytes, bytes]
    ) -> tuple[str, dict[str, Any]]:
        data = json.loads(raw[b"data"])
        personal = await self._personal(meme, raw.get(b"sealed", b""))
        if kind == FORMAT_CHOSEN:
            meme.format = data["format"]
            return kind, {"format": data["format"]}
        if kind == CAPTION_WRITTEN:
            meme.format = data["format"]
            return kind, {"format": data["format"], "texts": _texts(meme, personal)}
        if kind == VERDICT:
            reasons = None if personal is None else personal.get("reasons")
            fields = ("round", "verifier", "status", "confidence")
            return kind, {**{k: data.get(k) for k in fields}, "reasons": reasons}
        if kind == SCORED:
            scores = {k: data.get(k) for k in SCORES}
            return kind, {"round": data["round"], "overall": data["overall"], "scores": scores}
        if kind == REFINED:
            return kind, {"round": data.get("round"), "texts": _texts(meme, personal)}
        return kind, {"bytes": data.get("bytes")}  # rendered

    async def _personal(self, meme: _Meme, sealed: bytes) -> dict[str, Any] | None:
        """The event's personal fields; None once the meme is erased (its key is gone)."""
        if not sealed:
            return {}
        if meme.key is None:
            with _reading(f"the key of {meme.entity}"):
                key = await self.client.get(self.keys.sealing_key(meme.entity))
            if key is None:
                return None
            meme.key = cast(bytes, key)
        return Sealer.open_with(meme.key, meme.entity, sealed)

    async def close(self) -> None:
        await self.client.aclose()


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Redis failing is the store's error (the gateway ends the stream; the client resumes)."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        raise StoreError(f"reading {what}: {exc}") from exc


def _task_message(kind: str) -> tuple[str, dict[str, Any]] | None:
    """A task status as the stream shows it (a last one's data: the gateway's), or None."""
    if kind in (TASK_QUEUED, TASK_RUNNING):
        return kind, {}
    ending = TASK_ENDS.get(kind)
    return None if ending is None else (ending, {})


def _texts(meme: _Meme, personal: dict[str, Any] | None) -> dict[str, str] | None:
    """The caption's texts by slot name (None once the meme is erased)."""
    if personal is None or not isinstance(personal.get("texts"), list):
        return None
    texts: list[str] = personal["texts"]
    try:
        names = [slot.name for slot in get_format(meme.format).slots]
    except UnknownFormat:
        names = []
    if len(names) != len(texts):
        names = [f"text{i}" for i in range(1, len(texts) + 1)]
    return dict(zip(names, texts))
