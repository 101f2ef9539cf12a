"""Asynchronous generation: the task group, a ``one_for_all`` pair of ledger and runner.

The ledger records each task in Redis before answering (the 202 means durably recorded) and
hands it to the runner (clients read tasks back through the store pool, not the ledger); the runner, an async actor, has the generator pool make the meme and
answers the ledger, which records the outcome. The two share the lease of every task in
flight: if the runner dies its tasks' answers never come; if the ledger dies the runner's
answers go nowhere. So the group is ``one_for_all``: both restart, and the new ledger takes
every unfinished task back from Redis and hands it to the new runner.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, WakeupMessage

from actors.async_actor import AsyncActor
from actors.base import BaseActor, RequestFailed
from actors.bridge import RemoteFailure
from actors.messages import Located, Reply, Request, WhereIs, new_correlation_id
from memesys.domain.ids import new_id
from memesys.domain.messages import GenerateMeme, RunnerReady, RunTask, SubmitTask
from memesys.errors import ErrorCode, translate
from memesys.storage.connection import connect
from memesys.storage.memes import StoreError
from memesys.storage.tasks import TaskStore
from memesys.tree.paths import GENERATOR

log = logging.getLogger("memesys.tree.tasks")

RETRY_S = 1.0


@dataclass(frozen=True)
class TaskArgs:
    redis_url: str
    key_prefix: str
    ttl_s: int
    timeout_s: float
    max_in_flight: int
    ledger: str  # the ledger's name next to the runner, under the same supervisor


class TaskLedger(BaseActor):
    def on_start(self, args: TaskArgs) -> None:
        client = connect(args.redis_url)
        self.client = client
        self.tasks = TaskStore(client, args.key_prefix, args.ttl_s)
        self.runner: ActorAddress | None = None
        self.leases: dict[str, str] = {}  # correlation id of a RunTask -> task id

    def on_stop(self) -> None:
        self.client.close()

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, SubmitTask):
            try:
                return self._submit(payload.order)
            except StoreError as exc:
                raise RequestFailed(exc.code, str(exc)) from exc
        return super().handle(payload)

    def _submit(self, order: GenerateMeme) -> str:
        now = time.time()
        task = {"id": new_id(), "status": "queued", "stage": "queued", "progress": 0.0,
                "request": dataclasses.asdict(order), "created_at": now}
        self.tasks.put(task)
        self._lease(task)
        return task["id"]

    def _lease(self, task: dict) -> None:
        """Lease the task to the runner; without a runner yet it stays queued in Redis."""
        if self.runner is None:
            return
        cid = new_correlation_id()
        self.leases[cid] = task["id"]
        self.tasks.put({**task, "status": "running", "stage": "generating", "progress": 0.5})
        self.send(self.runner, Request(RunTask(task["id"], GenerateMeme(**task["request"])), cid))

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, RunnerReady):
            self.runner = sender
            for task in self.tasks.open_tasks():
                self._lease(task)
        elif isinstance(msg, Reply) and msg.correlation_id in self.leases:
            self._finish(self.leases.pop(msg.correlation_id), msg)
        elif isinstance(msg, WakeupMessage) and isinstance(msg.payload, str):
            task = self.tasks.get(msg.payload)
            if task is not None and task["status"] == "queued":
                self._lease(task)
        else:
            super().receive_other(msg, sender)

    def _finish(self, task_id: str, reply: Reply) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return  # expired meanwhile
        if reply.ok:
            self.tasks.put({**task, "status": "succeeded", "stage": "done", "progress": 1.0,
                            "meme_id": reply.payload["id"]})
        elif translate(reply.error.code) is ErrorCode.OVERLOADED:
            self.tasks.put({**task, "status": "queued", "stage": "queued", "progress": 0.0})
            self.wakeupAfter(RETRY_S, payload=task_id)
        else:
            log.warning("task %s failed: %s", task_id, reply.error)
            self.tasks.put({**task, "status": "failed", "stage": "done", "progress": 1.0,
                            "error": {"code": reply.error.code,
                                      "message": reply.error.message}})


class TaskRunner(AsyncActor):
    """Runs leased tasks concurrently (bounded by ``max_in_flight``) through the generator."""

    def on_start(self, args: TaskArgs) -> None:
        self.args = args
        self.max_in_flight = args.max_in_flight
        self._lookup = new_correlation_id()
        self.send(self.parent, Request(WhereIs(args.ledger), self._lookup))

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Reply) and msg.correlation_id == self._lookup:
            if not msg.ok:  # the ledger is not running: crash, so the group restarts
                raise RuntimeError(f"cannot find the task ledger: {msg.error.message}")
            located: Located = msg.payload
            self.send(located.address, RunnerReady())
        else:
            super().receive_other(msg, sender)

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, RunTask):
            return self._make_meme(payload)
        return super().handle(payload)

    async def _make_meme(self, task: RunTask) -> dict:
        try:
            return await self.ask(GENERATOR, task.order, self.args.timeout_s, idempotent=True)
        except RemoteFailure as exc:
            raise RequestFailed(exc.failure.code, exc.failure.message) from exc
