"""Asynchronous generation: the task group, a ``one_for_all`` pair of ledger and runner.

The ledger records each task in Redis before answering (the 202 means durably recorded) and
hands it to the runner (clients read tasks back through the store pool, not the ledger); the
runner, an async actor, has the generator pool make the meme and answers the ledger, which
records the outcome. A task's meme is ``background``: it is admitted only with what people's
memes leave of the provider's budget (``[llm] task_backlog_s``, :mod:`memesys.pipeline.
admission`); refused (``llm_rate_limited``, as for ``overloaded``), the task goes back to the
queue and is leased again after the Retry-After. The two share the lease of every task in
flight: if the runner dies its tasks' answers never come; if the ledger dies the runner's
answers go nowhere. So the group is ``one_for_all``: both restart, and the new ledger takes
every unfinished task back from Redis and hands it to the new runner. A task it finds
``running`` whose meme was saved (the old ledger died before it recorded the outcome) is
recorded ``succeeded`` with that meme rather than made again; one whose meme was not saved is
made again under a new meme id, and the unsaved meme's stream ends ``failed``
(``worker_lost``, :meth:`~memesys.storage.tasks.TaskStore.settle`).

A running task's meme is named by the ledger when it leases the task (``making``, recorded with
the ``running`` status): the task's events say which meme stream holds its progress, before
the meme's first event (:mod:`memesys.http.progress` follows both; the served stage and
progress are that meme's, :meth:`~memesys.storage.tasks.TaskStore.staged`).

Cancel (``CancelTask``): the ledger records the task ``cancelled`` (a queued one is never
leased again) and, for a leased one, tells the runner to cancel its lease's request
(:class:`~actors.messages.Cancel`): the runner's coroutine is cancelled, and with it its ask
to the generator worker, which cancels the meme's coroutine and its asks to the verifiers
(:mod:`actors.bridge`). Each cancelled ask waits for its target to stop; the ledger answers once
the runner's answer comes (at most ``CANCEL_WAIT_S``): from then on no call is made for it.

A Redis outage is not a crash of the ledger. A submission while Redis is down answers
``store_error`` at once (never a 202 for a task that is not recorded). An outcome that cannot
be written is kept in memory (``unsaved``) with the leases; the ledger probes Redis with
backoff (``redis.retry_backoff_initial_s`` .. ``_max_s``) and, once it is back, writes what it
kept, then leases every open task it does not hold. A task whose meme failed only because the
store was down goes back to the queue (at most ``MAX_STORE_REQUEUES`` times). A corrupt task
record is quarantined and failed by the store (:mod:`memesys.storage.tasks`), never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, WakeupMessage

from actors import tracecontext
from actors.async_actor import AsyncActor
from actors.base import BaseActor, RequestFailed
from actors.bridge import RemoteFailure
from actors.messages import Cancel, Located, Reply, Request, WhereIs, new_correlation_id
from memesys.domain.events import STAGE_PROGRESS, STARTED
from memesys.domain.ids import new_id
from memesys.domain.messages import CancelTask, GenerateMeme, RunnerReady, RunTask, SubmitTask
from memesys.errors import ErrorCode, translate
from memesys.storage.availability import availability_for
from memesys.storage.connection import connect
from memesys.storage.memes import StoreError
from memesys.storage.quarantine import Quarantine
from memesys.storage.tasks import OPEN_STATES, TaskStore
from memesys.telemetry import tracing
from memesys.tree.paths import GENERATOR

log = logging.getLogger("memesys.tree.tasks")

RETRY_S = 1.0
MAX_STORE_REQUEUES = 5  # a task that failed on store_error this often fails for good
_FLUSH = "flush"  # wakeup payload: probe Redis, write what was kept, lease the open tasks
CANCEL_WAIT_S = 5.0  # a cancel's answer waits this long for the runner to stop the meme


@dataclass(frozen=True)
class _CancelWait:
    """Wakeup payload: answer the cancel of lease ``correlation_id`` if the runner has not."""

    correlation_id: str


Task = dict[str, Any]  # a task record, as the store keeps it (JSON)


@dataclass(frozen=True)
class TaskArgs:
    redis_url: str
    key_prefix: str
    ttl_s: int
    timeout_s: float
    max_in_flight: int
    ledger: str  # the ledger's name next to the runner, under the same supervisor
    quarantine_ttl_s: int = 7 * 24 * 3600
    retry_initial_s: float = 0.05
    retry_max_s: float = 0.5
    redis_disk: str = ""  # the embedded server's data directory (Config.embedded_redis_dir)


class TaskLedger(BaseActor):
    def on_start(self, args: TaskArgs) -> None:
        tracing.start(self.name)
        client = connect(args.redis_url)
        self.client = client
        self.availability = availability_for(
            args.redis_url,
            "task ledger",
            args.key_prefix,
            args.retry_initial_s,
            args.retry_max_s,
            args.redis_disk,
        )
        self.tasks = TaskStore(
            client,
            args.key_prefix,
            args.ttl_s,
            self.availability,
            Quarantine(client, args.key_prefix, args.quarantine_ttl_s),
        )
        self.runner: ActorAddress | None = None
        self.leases: dict[str, Task] = {}  # correlation id of a RunTask -> the task leased
        # Outcomes not yet written because Redis was down, by task id (the latest wins).
        self.unsaved: dict[str, Task] = {}
        self.resync = False  # lease the open tasks from Redis once it answers
        self.flush_armed = False
        self.stalled = False  # a write failed and was logged; cleared by a complete flush
        # lease correlation id -> the CancelTask request waiting for the runner, its record
        self.cancelling: dict[str, tuple[Request, ActorAddress, Task]] = {}

    def on_stop(self) -> None:
        try:
            self.client.close()
        finally:
            tracing.stop()

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, SubmitTask):
            try:
                return self._submit(payload.order)
            except StoreError as exc:  # down: 503 store_error now, never a 202 not recorded
                raise RequestFailed(exc.code, str(exc)) from exc
        return super().handle(payload)

    def handle_request(self, request: Request, sender: ActorAddress) -> None:
        if isinstance(request.payload, CancelTask):
            self._cancel(request, sender, request.payload.task_id)
        else:
            super().handle_request(request, sender)

    def _cancel(self, request: Request, sender: ActorAddress, task_id: str) -> None:
        """Record the task cancelled and stop its meme (see the module's doc); answered with
        its record, ``not_found`` or ``task_finished``."""
        try:
            task = self.tasks.get(task_id)
            if task is None:
                raise RequestFailed(ErrorCode.NOT_FOUND, f"no task {task_id}")
            cancelled = {**task, "status": "cancelled", "stage": "done", "progress": 1.0}
            cancelled.pop("making", None)
            if task["status"] not in OPEN_STATES or not self.tasks.put_if_open(cancelled):
                done = self.tasks.get(task_id) or task
                raise RequestFailed(
                    ErrorCode.TASK_FINISHED, f"task {task_id} has already {done['status']}"
                )
            answer = self.tasks.get(task_id) or cancelled
        except StoreError as exc:
            self.reply(request, sender, error=RequestFailed(exc.code, str(exc)).failure)
            return
        except RequestFailed as failed:
            self.reply(request, sender, error=failed.failure)
            return
        self.unsaved.pop(task_id, None)
        leased = [cid for cid, held in self.leases.items() if held["id"] == task_id]
        if not leased or self.runner is None:
            self.reply(request, sender, answer)
            return
        for cid in leased:
            del self.leases[cid]
            self.send(self.runner, Cancel(cid))
            self.cancelling[cid] = (request, sender, answer)
            self.wakeupAfter(CANCEL_WAIT_S, payload=_CancelWait(cid))

    def _cancelled(self, correlation_id: str, confirmed: bool) -> None:
        """The runner stopped the lease's meme (or did not say so in time): answer the cancel."""
        waiting = self.cancelling.pop(correlation_id, None)
        if waiting is None:
            return
        request, sender, answer = waiting
        if not confirmed:
            log.warning("task %s: the runner did not confirm its cancel in time", answer["id"])
        self.reply(request, sender, answer)

    def _submit(self, order: GenerateMeme) -> str:
        now, task_id = time.time(), new_id()
        task: Task = {
            "id": task_id,
            "status": "queued",
            "stage": "queued",
            "progress": 0.0,
            "request": dataclasses.asdict(order),
            "created_at": now,
            "updated_at": now,
        }
        self.tasks.put(task)  # durably recorded: from here on the 202 holds
        self._lease(task)
        return task_id

    def _leased(self) -> set[str]:
        return {task["id"] for task in self.leases.values()}

    def _lease(self, task: Task) -> None:
        """Lease the task to the runner; without a runner, or while Redis is down, it stays
        queued in Redis and is leased when both are back."""
        if self.runner is None or task["id"] in self._leased():
            return
        try:
            if self._made_before(task):
                return
        except StoreError as exc:
            self._store_failed(exc)
            return
        making = new_id()  # the meme's id: the task's events say where its progress goes
        running = {**task, "status": "running", "stage": STARTED, "making": making}
        running["progress"] = STAGE_PROGRESS[STARTED]
        try:
            if not self.tasks.put_if_open(running):
                return  # finished meanwhile (or quarantined and failed)
        except StoreError as exc:
            self._store_failed(exc)
            return
        cid = new_correlation_id()
        self.leases[cid] = running
        # after people's memes; its events carry the task's id
        order = GenerateMeme(
            **{**task["request"], "background": True, "correlation": task["id"], "meme_id": making}
        )
        # in the trace of the request that submitted it, when it is leased while handling that
        self.send(
            self.runner,
            Request(RunTask(task["id"], order), cid, trace_context=tracecontext.carrier()),
        )

    def _made_before(self, task: Task) -> bool:
        """A task left running by a ledger that died after its meme was saved: record it
        succeeded with that meme (it is never made twice), scrubbed if the meme was erased
        since (as its erasure would have done); False when there is none."""
        making = task.get("making")
        if task["status"] != "running" or not isinstance(making, str):
            return False
        settled = self.tasks.settle(making)
        if settled == "unmade":
            return False  # its stream now ends failed: made again, under a new id
        log.info("task %s: its meme %s was made before the restart", task["id"], making)
        self._record(_succeeded(task, making))
        if settled == "erased":
            self.tasks.scrub_meme(making)
        return True

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, RunnerReady):
            self.runner = sender
            self.resync = True
            self._flush()
        elif isinstance(msg, Reply) and msg.correlation_id in self.leases:
            self._finish(self.leases.pop(msg.correlation_id), msg)
        elif isinstance(msg, Reply) and msg.correlation_id in self.cancelling:
            self._cancelled(msg.correlation_id, confirmed=True)
        elif isinstance(msg, WakeupMessage) and isinstance(msg.payload, _CancelWait):
            self._cancelled(msg.payload.correlation_id, confirmed=False)
        elif isinstance(msg, WakeupMessage) and msg.payload == _FLUSH:
            self.flush_armed = False
            self._flush()
        elif isinstance(msg, WakeupMessage) and isinstance(msg.payload, str):
            self._retry(msg.payload)
        else:
            super().receive_other(msg, sender)

    def _retry(self, task_id: str) -> None:
        """A requeued task's wait is over: lease it if it is still queued."""
        if task_id in self._leased() or task_id in self.unsaved:
            return
        try:
            task = self.tasks.get(task_id)
        except StoreError as exc:
            self._store_failed(exc)  # the resync after the outage leases it
            return
        if task is not None and task["status"] == "queued":
            self._lease(task)

    def _finish(self, task: Task, reply: Reply) -> None:
        task_id, error = task["id"], reply.error
        code = None if error is None else translate(error.code)
        requeues = task.get("store_requeues", 0)
        if error is None:
            self._record(_succeeded(task, reply.payload["id"]))
            return
        task = {k: v for k, v in task.items() if k != "making"}  # its meme is not made
        if code in (ErrorCode.OVERLOADED, ErrorCode.LLM_RATE_LIMITED) or (
            code is ErrorCode.STORE_ERROR and requeues < MAX_STORE_REQUEUES
        ):
            # Not the task's fault: back to the queue, tried again after a pause (a task the
            # provider's schedule had no room for: once the schedule says it may have).
            outcome = {**task, "status": "queued", "stage": "queued", "progress": 0.0}
            if code is ErrorCode.STORE_ERROR:
                outcome["store_requeues"] = requeues + 1
            wait = error.retry_after if code is ErrorCode.LLM_RATE_LIMITED else None
            self.wakeupAfter(max(RETRY_S / 10, wait or RETRY_S), payload=task_id)
        else:
            log.warning("task %s failed: %s", task_id, error)
            outcome = {
                **task,
                "status": "failed",
                "stage": "done",
                "progress": 1.0,
                "error": {"code": error.code, "message": error.message},
            }
        self._record(outcome)

    def _record(self, outcome: Task) -> None:
        """Write an outcome; while Redis is down keep it, to be written once it is back."""
        if self.unsaved:  # keep the order: older outcomes first
            self.unsaved[outcome["id"]] = outcome
            self._arm_flush()
            return
        try:
            self.tasks.put_if_open(outcome)
        except StoreError as exc:
            self.unsaved[outcome["id"]] = outcome
            self._store_failed(exc)

    def _store_failed(self, exc: StoreError) -> None:
        """Redis could not be used (down, or refusing writes): remember to resync, and try
        again after backoff; logged once until a flush completes."""
        if not self.stalled:
            self.stalled = True
            log.warning(
                "task ledger: %s; keeping %d outcome(s) and %d lease(s), retrying with backoff",
                exc,
                len(self.unsaved),
                len(self.leases),
            )
        self.resync = True
        self._arm_flush()

    def _arm_flush(self) -> None:
        if not self.flush_armed:
            self.flush_armed = True
            self.wakeupAfter(max(0.01, self.availability.next_probe_in()), payload=_FLUSH)

    def _flush(self) -> None:
        """Write the outcomes kept during an outage, then lease the open tasks not held."""
        try:
            while self.unsaved:
                task_id = next(iter(self.unsaved))
                self.tasks.put_if_open(self.unsaved[task_id])
                del self.unsaved[task_id]
            if self.resync:
                self.resync = False  # a lease that fails below sets it again
                leased = self._leased()
                for task in self.tasks.open_tasks():
                    if task["id"] not in leased:
                        self._lease(task)
        except StoreError as exc:
            self._store_failed(exc)
        else:
            self.stalled = self.resync  # every outcome written and every lease taken


def _succeeded(task: Task, meme_id: str) -> Task:
    done = {k: v for k, v in task.items() if k != "making"}
    return {**done, "status": "succeeded", "stage": "done", "progress": 1.0, "meme_id": meme_id}


class TaskRunner(AsyncActor):
    """Runs leased tasks concurrently (bounded by ``max_in_flight``) through the generator."""

    def on_start(self, args: TaskArgs) -> None:
        tracing.start(self.name)
        self.args = args
        self.max_in_flight = args.max_in_flight
        self._lookup = new_correlation_id()
        self.send(self.parent, Request(WhereIs(args.ledger), self._lookup))

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Reply) and msg.correlation_id == self._lookup:
            if msg.error is not None:  # the ledger is not running: crash, so the group restarts
                raise RuntimeError(f"cannot find the task ledger: {msg.error.message}")
            located: Located = msg.payload
            self.send(located.address, RunnerReady())
        else:
            super().receive_other(msg, sender)

    def on_stop(self) -> None:
        try:
            super().on_stop()
        finally:
            tracing.stop()

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, RunTask):
            return self._make_meme(payload)
        return super().handle(payload)

    async def _make_meme(self, task: RunTask) -> dict[str, Any]:
        """The meme, as the generator answered it; its failure is the task's, as it came."""
        try:
            meme: dict[str, Any] = await self.ask(
                GENERATOR, task.order, self.args.timeout_s, idempotent=True
            )
        except RemoteFailure as exc:
            raise RequestFailed.of(exc.failure) from exc
        return meme
