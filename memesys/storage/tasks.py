"""Asynchronous generation tasks in Redis: the durable record a client polls.

Keys: ``{p}:task:{id}`` (compact JSON, expires ``ttl_s`` after its last update) and
``{p}:tasks:open`` (set of ids not yet finished, read back when the task group restarts).
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

import redis

from memesys.domain.ids import valid_id
from memesys.storage.memes import StoreError

OPEN_STATES = ("queued", "running")


class TaskStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self._r = client
        self._p = prefix
        self._ttl = ttl_s

    def _key(self, task_id: str) -> str:
        return f"{self._p}:task:{task_id}"

    @property
    def _open(self) -> str:
        return f"{self._p}:tasks:open"

    def put(self, task: dict) -> None:
        """Write the whole record; open tasks are indexed, finished ones leave the index."""
        task = {**task, "updated_at": time.time()}
        record = json.dumps(task, separators=(",", ":"), ensure_ascii=False)
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self._key(task["id"]), record, ex=self._ttl)
            if task["status"] in OPEN_STATES:
                pipe.sadd(self._open, task["id"])
            else:
                pipe.srem(self._open, task["id"])
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis failed while saving task {task['id']}: {exc}") from exc

    def get(self, task_id: str) -> Optional[dict]:
        if not valid_id(task_id):
            return None
        try:
            raw = self._r.get(self._key(task_id))
        except redis.RedisError as exc:
            raise StoreError(f"redis failed while reading task {task_id}: {exc}") from exc
        return None if raw is None else json.loads(raw)

    def open_tasks(self) -> list[dict[str, Any]]:
        """Every unfinished task, oldest first (expired records are dropped from the index)."""
        try:
            ids = sorted(m.decode() for m in self._r.smembers(self._open))
            tasks = []
            for task_id in ids:
                task = self.get(task_id)
                if task is None:
                    self._r.srem(self._open, task_id)
                else:
                    tasks.append(task)
        except redis.RedisError as exc:
            raise StoreError(f"redis failed while listing open tasks: {exc}") from exc
        return sorted(tasks, key=lambda t: t["created_at"])
