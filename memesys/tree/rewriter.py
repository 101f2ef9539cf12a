"""The embedded Redis's files catch up with erasures: a timer steps
:class:`~memesys.storage.rewrites.Rewrites` every ``period_s`` (a tenth of
``storage.erasure_window_s``, at most 1 s); nothing else.

Why an actor of its own beside the server's owner (``redis/rewriter``): one process rewrites,
whoever erased (any store worker), so one rewrite covers every erasure made before it; the
count it works from is in Redis, so a restart of this actor, of a store worker or of the daemon
loses no debt; no store worker ever waits on a rewrite; and it exists only when the daemon owns
the server (with ``REDIS_URL`` the files are someone else's). An ordered stop (this actor stops
before the server) settles what is owed within ``STOP_WITHIN_S``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, WakeupMessage

from actors.base import BaseActor
from memesys.storage.connection import connect
from memesys.storage.erasures import Erasures
from memesys.storage.rewrites import Rewrites
from memesys.telemetry import tracing

log = logging.getLogger("memesys.tree.rewriter")

# Each command's bound: a step waits at most this on a stopped server (its first command fails
# and ends the step), well inside the health timeout; a fork of a large dataset takes less.
CLIENT_TIMEOUT_S = 1.0
# An ordered stop settles a debt within this plus one last step: inside its shutdown_s (4 s,
# which keeps the tree's derived shutdown budget under system.shutdown_timeout_s).
STOP_WITHIN_S = 2.5
_STEP = "step"


@dataclass(frozen=True)
class RewriterArgs:
    redis_url: str
    key_prefix: str
    erasure_window_s: float


class Rewriter(BaseActor):
    def on_start(self, args: RewriterArgs) -> None:
        tracing.start(self.name)
        self.client = connect(args.redis_url, timeout_s=CLIENT_TIMEOUT_S)
        erasures = Erasures(self.client, args.key_prefix)
        self.rewrites = Rewrites(self.client, erasures, args.erasure_window_s)
        self.wakeupAfter(self.rewrites.period_s, payload=_STEP)

    def on_stop(self) -> None:
        if not self.rewrites.finish(STOP_WITHIN_S):
            log.warning(
                "erasure rewrite: still owed at stop (%s); it resumes at the next start",
                self.rewrites.reason or self.rewrites.phase.value,
            )
        self.client.close()
        tracing.stop()

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and msg.payload == _STEP:
            self.rewrites.step()
            self.wakeupAfter(self.rewrites.period_s, payload=_STEP)
        else:
            super().receive_other(msg, sender)
