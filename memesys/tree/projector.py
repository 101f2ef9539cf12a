"""The projector: keeps the projections caught up with the event log, and the log's snapshot
folded forward (:mod:`memesys.storage.projector`, :mod:`memesys.storage.snapshots`).

Every :data:`PERIOD_S`: while the projections' checkpoint is missing (they were lost, or a
store meets its log for the first time: a first start, an upgrade, a Redis restored without
them) it replays one bounded step (:data:`STEP_S`) from the snapshot and the log after it,
until the checkpoint is set again; an INFO line when it begins and when it is done. Otherwise,
once ``storage.snapshot_every`` entries of the global stream are not folded into the snapshot,
it folds one bounded step.

Why an actor of its own, last in the tree: one bounded step a wakeup keeps it answering health
checks through a catch-up of any length; its progress is in Redis (checkpoint, snapshot
position), so a restart resumes (a catch-up from the snapshot again: it is idempotent), and
its crash restarts nothing else. Redis away is an expected condition: one WARNING, and the
next period goes on from the last batch done. A corrupt event or pointer is skipped with a
WARNING by the storage layer, so it cannot make this actor crash over and over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from thespian.actors import ActorAddress, WakeupMessage

from actors.base import BaseActor
from memesys.domain.gauges import PROJECTIONS_BEHIND
from memesys.storage.connection import connect
from memesys.storage.projector import Projector, projections_behind
from memesys.storage.snapshots import Snapshot
from memesys.telemetry import tracing

log = logging.getLogger("memesys.tree.projector")

PERIOD_S = 0.5
STEP_S = 0.25  # a step's longest run: well inside the health timeout
CLIENT_TIMEOUT_S = 1.0  # a step on a stalled Redis ends well inside the health timeout
# An ordered stop waits for at most the step under way (STEP_S, then a command's timeout): its
# shutdown_s, which keeps the tree's derived shutdown budget under system.shutdown_timeout_s.
STOP_S = 1.5
_STEP = "step"


@dataclass(frozen=True)
class ProjectorArgs:
    redis_url: str
    key_prefix: str
    snapshot_every: int  # storage.snapshot_every: global entries between two folds


class ProjectorActor(BaseActor):
    def on_start(self, args: ProjectorArgs) -> None:
        tracing.start(self.name)
        self.args = args
        self.client = connect(args.redis_url, timeout_s=CLIENT_TIMEOUT_S)
        self.snapshot = Snapshot(self.client, args.key_prefix)
        self.catching: Projector | None = None
        self.failing = False
        self.behind = 0.0
        self.wakeupAfter(0.0, payload=_STEP)

    def on_stop(self) -> None:
        self.client.close()
        tracing.stop()

    def gauges(self) -> tuple[tuple[str, float], ...]:
        return ((PROJECTIONS_BEHIND, self.behind),)

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and msg.payload == _STEP:
            self._step()
            self.wakeupAfter(PERIOD_S, payload=_STEP)
        else:
            super().receive_other(msg, sender)

    def _step(self) -> None:
        try:
            if not self._catch_up() and self.snapshot.due(self.args.snapshot_every):
                self.snapshot.fold(STEP_S)
        except redis.RedisError as exc:
            if not self.failing:
                log.warning("projector: Redis failed (%s); trying again every %g s", exc, PERIOD_S)
            self.failing = True  # a catch-up under way goes on from its last batch
            return
        if self.failing:
            log.info("projector: Redis answers again")
            self.failing = False

    def _catch_up(self) -> bool:
        """One step of a catch-up if the projections are behind; False if they are not."""
        if self.catching is None:
            if not projections_behind(self.client, self.args.key_prefix):
                self.behind = 0.0
                return False
            self.catching = Projector(self.client, self.args.key_prefix)
            self.behind = 1.0
            log.info(
                "projector: the projections do not hold the event log (no checkpoint); "
                "replaying from %s",
                "the snapshot" if self.snapshot.position() else "the log's start",
            )
        if self.catching.step(STEP_S):
            done = self.catching.rebuilt()
            log.info(
                "projector: caught up in %.2f s: %d events read (%d through the snapshot), "
                "%d projected, %d of erased entities skipped, %d gone or unreadable",
                done.seconds,
                done.events,
                done.from_snapshot,
                done.projected,
                done.shredded,
                done.skipped,
            )
            self.catching, self.behind = None, 0.0
        return True
