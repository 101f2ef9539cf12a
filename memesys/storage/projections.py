"""The projections of the event log: what each event writes to the keys readers use (the meme
by id, memes by time, cache entries), as a pure function of the event, so the append that
records an event and a replay that rebuilds from the log write exactly the same.

:func:`writes` is the one definition; :mod:`memesys.storage.projector` replays the log through
it. An event whose entity's key was erased (:class:`~memesys.storage.sealing.Shredded`) projects
nothing: an erased meme never comes back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memesys.domain.events import CACHED, COMPLETED, ERASED, EXPIRED, TASK, TASK_SCRUBBED
from memesys.storage.eventlog import Event, Write
from memesys.storage.records import OPEN_STATES, TASK_STATES, packed


@dataclass(frozen=True)
class Keys:
    """The projection keys under one prefix (the same names :class:`MemeStore` reads)."""

    prefix: str

    def meme(self, meme_id: str) -> str:
        return f"{self.prefix}:meme:{meme_id}"

    def png(self, meme_id: str) -> str:
        return f"{self.prefix}:png:{meme_id}"

    @property
    def index(self) -> str:
        return f"{self.prefix}:memes"

    def cache(self, digest: str) -> str:
        return f"{self.prefix}:cache:{digest}"

    def cachedby(self, meme_id: str) -> str:
        return f"{self.prefix}:cachedby:{meme_id}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    @property
    def open_tasks(self) -> str:
        return f"{self.prefix}:tasks:open"

    def taskof(self, meme_id: str) -> str:
        return f"{self.prefix}:taskof:{meme_id}"

    def stream(self, entity: str) -> str:
        return f"{self.prefix}:events:{entity}"

    def sealing_key(self, entity: str) -> str:
        return f"{self.prefix}:events:key:{entity}"


def meme_entity(meme_id: str) -> str:
    return f"meme:{meme_id}"


def task_entity(task_id: str) -> str:
    return f"task:{task_id}"


PROJECTED = frozenset(
    {COMPLETED, CACHED, ERASED, EXPIRED, TASK_SCRUBBED}
    | {f"{TASK}{status}" for status in TASK_STATES}
)
"""The event types that write projections (the pipeline's progress events write none)."""


def writes(
    keys: Keys, event: Event, personal: Callable[[], dict[str, Any]], now: float | None = None
) -> list[Write]:
    """The projection writes of ``event``; ``personal`` opens its sealed fields (raising
    Shredded once the entity is erased). ``now``: the time cache expiries are counted from."""
    data = event.data
    if event.type == COMPLETED:
        meme_id = data["id"]
        return [
            ("SET", keys.meme(meme_id), packed(personal()["record"])),
            ("ZADD", keys.index, repr(float(data["created_at"])), meme_id),
        ]
    if event.type == CACHED:
        left_ms = int((float(data["expires_at"]) - (time.time() if now is None else now)) * 1000)
        meme_id, cache_key = data["meme"], keys.cache(data["cache"])
        if left_ms <= 0:  # expired: gone, and an older entry of the same key with it
            return [("DEL", cache_key)]
        return [
            ("SET", cache_key, meme_id, "PX", left_ms),
            ("SADD", keys.cachedby(meme_id), cache_key),
            ("PEXPIRE", keys.cachedby(meme_id), left_ms),
        ]
    if event.type in (ERASED, EXPIRED):
        meme_id = data["id"]
        return [
            ("DEL", keys.meme(meme_id), keys.png(meme_id), keys.cachedby(meme_id)),
            ("ZREM", keys.index, meme_id),
            *(("DEL", keys.cache(digest)) for digest in data.get("caches", ())),
        ]
    if event.type.startswith(TASK):
        return _task_writes(keys, event, personal, time.time() if now is None else now)
    return []  # the pipeline's progress events project nothing here


def _task_writes(
    keys: Keys, event: Event, personal: Callable[[], dict[str, Any]], now: float
) -> list[Write]:
    """A task's record (with what is left of its ``ttl_s``: the task, its stream and its key
    expire together), its place in the open set, and the pointer from its meme."""
    data = event.data
    left_ms = int((float(data["expires_at"]) - now) * 1000)
    if left_ms <= 0:
        return []
    task_id = event.entity.split(":", 1)[1]
    if event.type == TASK_SCRUBBED:
        record = json.dumps(data["record"], separators=(",", ":"), ensure_ascii=False)
        return [
            ("SET", keys.task(task_id), record, "PX", left_ms),
            ("DEL", keys.taskof(data["meme_id"]), keys.sealing_key(event.entity)),
        ]
    status = data["status"]
    ops: list[Write] = [
        ("SET", keys.task(task_id), personal()["record"], "PX", left_ms),
        ("SADD" if status in OPEN_STATES else "SREM", keys.open_tasks, task_id),
        ("PEXPIRE", keys.stream(event.entity), left_ms),
        ("PEXPIRE", keys.sealing_key(event.entity), left_ms),
    ]
    if status == "succeeded" and data.get("meme_id"):
        ops.append(("SET", keys.taskof(data["meme_id"]), task_id, "PX", left_ms))
    return ops
