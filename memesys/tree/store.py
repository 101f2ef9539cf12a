"""The store workers: thin actors around :class:`memesys.storage.memes.MemeStore` for the
gateway's reads, erasures and health checks. (Generator workers read the cache and save their
memes on Redis themselves: :mod:`memesys.tree.generator`.)

Each worker owns one synchronous Redis connection. A dependency error is not a crash: a Redis
error answers that request with a ``store_error`` failure, the worker marks Redis down and,
until a probe (spaced by ``redis.retry_backoff_initial_s`` .. ``_max_s``) finds it back,
answers ``store_error`` at once instead of waiting out a socket timeout per request
(:mod:`memesys.storage.availability`); a new process would not bring Redis back any sooner.
A health check (``StoreHealth``, for /readyz and /metrics) probes Redis on the short-timeout
client with a write that changes nothing, so even a frozen Redis is reported ``down`` within
the check's bound, and one that refuses writes (a full disk) is told from one that cannot be
reached; it only reports (:meth:`~memesys.storage.availability.Availability.health`).
A poison record is quarantined by the store and treated as absent. A forged page cursor
answers ``invalid_field``; any other exception is a server fault and crashes the worker (the
client sees ``worker_lost``).

``GetImage`` answers the PNG (read from its file) and its digest, or the digest alone when the
asker holds it; a PNG file that is missing or corrupt answers ``not_found`` saying so.

``DeleteMeme`` is an erasure: the task that made the meme is scrubbed first (so a retried
DELETE still scrubs it), then the meme, its PNG file (and the file's content unless another
meme has the same picture), its cache entries and any quarantined copy are deleted, and one
audit line (ids and time, no content) goes to the ``memesys.audit`` log. A worker that starts
settles what a crash left of image files being written or erased
(:meth:`~memesys.storage.memes.MemeStore.tidy_images`), and removes temporary files and
quarantined PNG files past their time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from thespian.actors import ActorAddress, WakeupMessage

from actors.base import BaseActor, RequestFailed
from memesys.domain.events import ERASED, EXPIRED
from memesys.domain.messages import (
    DeleteMeme,
    GetImage,
    GetMeme,
    GetTask,
    ListMemes,
    MemePage,
    StoreHealth,
    StoreState,
)
from memesys.storage.memes import PENDING_GRACE_S, MemeStore, StoreError
from memesys.storage.tasks import TaskStore
from memesys.telemetry import tracing
from memesys.telemetry.logs import AUDIT

audit = logging.getLogger(AUDIT)

_RETAIN = "retain"  # wakeup payload: erase what is past storage.retention_days
RETENTION_PERIOD_S = 60.0
RETENTION_SWEEP_S = 1.0  # a sweep's longest run: the worker's requests wait meanwhile
RETENTION_BATCH = 100
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreArgs:
    redis_url: str
    key_prefix: str
    task_ttl_s: int
    image_dir: str
    quarantine_ttl_s: int = 7 * 24 * 3600
    retry_initial_s: float = 0.05
    retry_max_s: float = 0.5
    redis_disk: str = ""  # the embedded server's data directory (Config.embedded_redis_dir)
    retention_days: float = 0.0  # storage.retention_days: 0 keeps memes forever


@contextmanager
def store_errors_answered() -> Iterator[None]:
    """A StoreError (Redis failed or is down: ``store_error``; a forged cursor; a save past
    its deadline) becomes the request's failure with its code, not a crash."""
    try:
        yield
    except StoreError as exc:
        raise RequestFailed(exc.code, str(exc)) from exc


class StoreWorker(BaseActor):
    def on_start(self, args: StoreArgs) -> None:
        tracing.start(self.name)
        self.args = args
        self.store = MemeStore.open(
            args.redis_url,
            f"store {self.name}",
            args.key_prefix,
            args.image_dir,
            args.quarantine_ttl_s,
            args.retry_initial_s,
            args.retry_max_s,
            args.redis_disk,
        )
        self.availability = self.store.availability
        self.tasks = TaskStore(
            self.store.client,
            args.key_prefix,
            args.task_ttl_s,
            self.availability,
            self.store.quarantine,
        )
        self._tidy()
        if args.retention_days > 0:
            self.wakeupAfter(self._retention_period(), payload=_RETAIN)

    def _retention_period(self) -> float:
        """Seconds between sweeps: a minute, or a quarter of a (test's) shorter retention."""
        return min(RETENTION_PERIOD_S, max(0.5, self.args.retention_days * 86400 / 4))

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and msg.payload == _RETAIN:
            self._retain()
            self.wakeupAfter(self._retention_period(), payload=_RETAIN)
        else:
            super().receive_other(msg, sender)

    def _retain(self) -> None:
        """Erase the memes past ``storage.retention_days``, oldest first, for at most
        RETENTION_SWEEP_S (the rest at the next sweep). Both store workers may sweep: an erasure
        of a meme already erased adds nothing."""
        cutoff = time.time() - self.args.retention_days * 86400
        until = time.monotonic() + RETENTION_SWEEP_S
        try:
            while time.monotonic() < until:
                due = self.store.older_than(cutoff, RETENTION_BATCH)
                for meme_id in due:
                    self._erase(meme_id, EXPIRED)
                if len(due) < RETENTION_BATCH:
                    return
        except StoreError as exc:
            log.warning("retention: %s; the next sweep tries again", exc)

    def _tidy(self) -> None:
        """What a crash left of image files; never fails the start (the next erasure, or the
        next worker, tries again)."""
        try:
            self.store.tidy_images()
            self.store.images.sweep(PENDING_GRACE_S, self.args.quarantine_ttl_s)
        except (StoreError, OSError) as exc:
            log.warning("image files left to tidy later: %s", exc)

    def on_stop(self) -> None:
        try:
            self.store.close()
        finally:
            tracing.stop()

    def handle(self, payload: Any) -> Any:
        with store_errors_answered():
            return self._apply(payload)

    def _apply(self, payload: Any) -> Any:
        store = self.store
        if isinstance(payload, GetMeme):
            return store.get(payload.meme_id)
        if isinstance(payload, GetImage):
            return store.image(payload.meme_id, payload.known)
        if isinstance(payload, ListMemes):
            return MemePage(*store.list(payload.limit, payload.cursor))
        if isinstance(payload, DeleteMeme):
            return self._erase(payload.meme_id)
        if isinstance(payload, GetTask):
            task = self.tasks.get(payload.task_id)
            if task is not None:
                task = self.tasks.staged(task)
            if task is not None and task.get("meme_id"):
                task["meme"] = store.get(task["meme_id"])
            return task
        if isinstance(payload, StoreHealth):
            return self._health()
        return super().handle(payload)

    def _erase(self, meme_id: str, why: str = ERASED) -> bool:
        if self.store.projections_behind():
            # an erasure finds the meme's task and cache entries through projections the
            # projector has not replayed yet: it would leave them behind
            raise StoreError(
                "the projections are catching up with the event log; erasures wait until they "
                "hold it (GET /readyz)"
            )
        task_id = self.tasks.scrub_meme(meme_id)
        erased = self.store.delete(meme_id, why)
        if erased or task_id:
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            audit.info(
                "%s: meme %s %s at %s%s",
                "erasure" if why == ERASED else "retention",
                meme_id,
                why,
                at,
                f"; its task {task_id} scrubbed" if task_id else "",
            )
        return erased

    def _health(self) -> StoreState:
        reason = self.availability.health()
        if reason:
            return StoreState(False, reason)
        try:
            counts = self.store.quarantined()
            behind = self.store.projections_behind()
        except StoreError:
            return StoreState(False, self.availability.reason or "unreachable")
        return StoreState(True, "", tuple(sorted(counts.items())), behind)
