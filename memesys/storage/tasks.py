"""Asynchronous generation tasks in Redis: the durable record a client polls.

Keys: ``{p}:task:{id}`` (compact JSON, expires ``ttl_s`` after its last update),
``{p}:tasks:open`` (set of ids not yet finished, read back when the task group restarts) and
``{p}:taskof:{meme_id}`` (the task that made a meme, so erasing the meme can scrub the task).
A running task's record names the meme it is making (``making``, named by the ledger): the
stage and progress served are that meme's (:meth:`TaskStore.staged`).

A task record that does not parse or validate is quarantined
(:mod:`memesys.storage.quarantine`) and replaced, in the same script, by a ``failed`` task
with a clear error, so its client learns it will never finish and the ledger never trips on it
again. Every Redis operation goes through an
:class:`~memesys.storage.availability.Availability` (fail fast while Redis is down). The client
never decodes replies (``decode_responses=False``): what redis-py types as ``bytes | str`` is
bytes here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any, Literal, cast

import redis

from memesys.domain.events import COMPLETED, ERASED, FAILED, TASK, TASK_SCRUBBED, task_stage
from memesys.domain.ids import valid_id
from memesys.errors import ErrorCode
from memesys.storage.availability import AlwaysUp, Availability
from memesys.storage.errors import StoreError
from memesys.storage.eventlog import ANY_VERSION, PREVIOUS, Event, EventLog, VersionConflict
from memesys.storage.projections import Keys, meme_entity, task_entity, writes
from memesys.storage.quarantine import Quarantine, fingerprint, is_wrong_type
from memesys.storage.records import OPEN_STATES, parse_json, task_problem
from memesys.storage.sealing import Sealer

__all__ = ["CORRUPT_TASK_MESSAGE", "OPEN_STATES", "StoreError", "TaskStore"]

CORRUPT_TASK_MESSAGE = "the task's record was unreadable; it was set aside and the task failed"
RACE_RETRIES = 5  # put_if_open's tries when another writer records a status first

Settled = Literal["made", "erased", "unmade"]
"""What became of the meme a dead lease was making (:meth:`TaskStore.settle`)."""


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class TaskStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_s: int,
        availability: Availability | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self._r = client
        self._ttl = ttl_s
        self.availability = availability or AlwaysUp()
        self.quarantine = quarantine or Quarantine(client, prefix)
        self.log = EventLog(client, prefix)
        self.sealer = Sealer(client, prefix)
        self.keys = Keys(prefix)

    @contextlib.contextmanager
    def _guard(self, what: str, write: bool = False) -> Iterator[None]:
        with self.availability.guard(what, write):
            yield

    def put(self, task: dict[str, Any]) -> None:
        """Record the task's new status as an event; its record (open tasks indexed,
        finished ones not; a succeeded task findable from its meme, ``taskof``) is the event's
        projection, written by the same script."""
        with self._guard(f"saving task {task['id']}", write=True):
            self._record(task, ANY_VERSION)

    def put_if_open(self, task: dict[str, Any]) -> bool:
        """Record ``task`` only if the task is still open (queued or running): a finished task
        is final, whatever answer comes late. False if it was not recorded. The task's version
        is read before its record, and the event expects it: a status recorded meanwhile makes
        this one look again."""
        entity = task_entity(task["id"])
        with self._guard(f"saving task {task['id']}", write=True):
            for _ in range(RACE_RETRIES):
                version = self.log.version(entity)
                current = self._decoded(task["id"], self._r)
                if current is None or current["status"] not in OPEN_STATES:
                    return False
                try:
                    self._record(task, version)
                    return True
                except VersionConflict:
                    continue
        raise StoreError(f"task {task['id']}: {RACE_RETRIES} writers in a row recorded first")

    def _record(self, task: dict[str, Any], expected: int) -> None:
        task = {**task, "updated_at": time.time()}
        entity, record = task_entity(task["id"]), _dumps(task)
        data = {
            "status": task["status"],
            "stage": task.get("stage"),
            "progress": task.get("progress"),
            "meme_id": task.get("meme_id"),
            "making": task.get("making"),
            "expires_at": task["updated_at"] + self._ttl,
        }
        sealed = self.sealer.seal(entity, {"record": record})
        event = Event(f"{TASK}{task['status']}", entity, data, task["id"], "ledger", "", sealed)
        self.log.append(event, expected, writes(self.keys, event, lambda: {"record": record}))

    def _decoded(self, task_id: str, reader: redis.Redis) -> dict[str, Any] | None:
        """The record via ``reader`` (the client or a watching pipeline), or None if missing;
        a corrupt one is quarantined, replaced by a failed task, and that is returned."""
        key = self.keys.task(task_id)
        try:
            raw = cast(bytes | None, reader.get(key))
        except redis.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            return self._set_aside(task_id, None, "not a string key")
        if raw is None:
            return None
        task, problem = parse_json(raw)
        problem = problem or task_problem(task_id, task)
        if problem is None:
            return cast(dict[str, Any], task)  # a record without its problem is an object
        return self._set_aside(task_id, raw, problem)

    def _set_aside(self, task_id: str, raw: bytes | None, reason: str) -> dict[str, Any]:
        key = self.keys.task(task_id)
        wrong_type = (
            None if raw is not None else cast(bytes, self._r.type(key)).decode(errors="replace")
        )
        now = time.time()
        failed: dict[str, Any] = {
            "id": task_id,
            "status": "failed",
            "stage": "done",
            "progress": 1.0,
            "created_at": now,
            "updated_at": now,
            "quarantined": True,
            "error": {"code": ErrorCode.INTERNAL.value, "message": CORRUPT_TASK_MESSAGE},
        }
        self.quarantine.move(
            "task",
            task_id,
            key,
            fingerprint(raw, wrong_type),
            reason,
            index=("srem", self.keys.open_tasks),
            replacement=_dumps(failed).encode(),
            replacement_ttl_s=self._ttl,
        )
        # Moved by this call or by another process just before: either way the record is the
        # failed one now (or rewritten by its ledger, which only writes valid records).
        return failed

    def get(self, task_id: str) -> dict[str, Any] | None:
        if not valid_id(task_id):
            return None
        with self._guard(f"reading task {task_id}"):
            return self._decoded(task_id, self._r)

    def staged(self, task: dict[str, Any]) -> dict[str, Any]:
        """``task`` with the stage and progress its meme has reached while it runs (the
        record says only "started": the meme's progress events are in the meme's stream,
        :func:`~memesys.domain.events.task_stage`)."""
        making = task.get("making")
        if task["status"] != "running" or not isinstance(making, str) or not valid_id(making):
            return task
        with self._guard(f"reading the progress of task {task['id']}"):
            stage, progress = task_stage(self._event_types(making))
        return {**task, "stage": stage, "progress": progress}

    def settle(self, meme_id: str) -> Settled:
        """What became of meme ``meme_id``, named by a lease whose ledger died: ``made``
        (completed; ``erased`` if erased since): its task is then finished with it, not made
        again. If not (``unmade``), its stream (when it has one and it has not ended) ends
        with ``failed`` (``worker_lost``), appended at the version just read: the log says
        the meme was never made, and a late save of it (a worker that outlived the ledger) no
        longer fits its stream's version. A stream that moved meanwhile (its maker still
        appends) is read again; StoreError if it kept moving (the ledger tries again after a
        pause)."""
        event = Event(
            FAILED, meme_entity(meme_id), {"code": ErrorCode.WORKER_LOST.value}, "", PREVIOUS, ""
        )
        with self._guard(f"settling meme {meme_id}", write=True):
            for _ in range(RACE_RETRIES):
                types = self._event_types(meme_id)
                if COMPLETED in types:
                    return "erased" if ERASED in types else "made"
                if not types or FAILED in types:
                    return "unmade"
                try:
                    self.log.append(event, len(types))
                    return "unmade"
                except VersionConflict:
                    continue
        raise StoreError(f"meme {meme_id}: its maker kept appending while it was settled")

    def _event_types(self, meme_id: str) -> list[str]:
        entries = cast(list[Any], self._r.xrange(self.log.stream(meme_entity(meme_id))))
        return [raw[b"type"].decode() for _, raw in entries]

    def open_tasks(self) -> list[dict[str, Any]]:
        """Every unfinished task, oldest first (expired records are dropped from the index,
        corrupt ones quarantined and failed)."""
        with self._guard("listing open tasks"):
            members = cast(set[bytes], self._r.smembers(self.keys.open_tasks))
            ids = sorted(m.decode(errors="replace") for m in members)
            tasks = []
            for task_id in ids:
                task = self._decoded(task_id, self._r) if valid_id(task_id) else None
                if task is None:
                    self._r.srem(self.keys.open_tasks, task_id)
                elif task["status"] in OPEN_STATES:
                    tasks.append(task)
        return sorted(tasks, key=lambda t: t["created_at"])

    def scrub_meme(self, meme_id: str) -> str | None:
        """Erasure: the task that made ``meme_id`` keeps its id, status and times, loses its
        request (the topic) and its meme; its quarantined copy, if any, is deleted. The id of
        the scrubbed task, or None when no task made this meme."""
        if not valid_id(meme_id):
            return None
        taskof = self.keys.taskof(meme_id)
        with self._guard(f"scrubbing the task of meme {meme_id}", write=True):
            raw = cast(bytes | None, self._r.get(taskof))
            task_id = raw.decode(errors="replace") if raw is not None else ""
            if not valid_id(task_id):
                self._r.delete(taskof)
                return None
            entity = task_entity(task_id)
            version = self.log.version(entity)
            task = self._decoded(task_id, self._r)
            if task is not None and task.get("meme_id") == meme_id:
                gone = ("request", "meme_id", "making")
                scrubbed = {k: v for k, v in task.items() if k not in gone}
                scrubbed["erased_at"] = time.time()
                left_ms = self._r.pttl(self.keys.task(task_id))
                left_s = left_ms / 1000 if left_ms > 0 else self._ttl
                data = {"record": scrubbed, "meme_id": meme_id, "expires_at": time.time() + left_s}
                # public: the request is gone from it; the key of the events that hold the
                # request goes (crypto-shredding), and with it the task's quarantined copy
                event = Event(TASK_SCRUBBED, entity, data, task_id, "erasure", "")
                copy = ("DEL", self.quarantine.key_of("task", task_id))
                ops = [*writes(self.keys, event, dict), copy]
                try:
                    self.log.append(event, version, ops)
                except VersionConflict:  # the ledger recorded a status meanwhile: again
                    return self.scrub_meme(meme_id)
            else:
                self._r.delete(taskof, self.quarantine.key_of("task", task_id))
        return task_id
