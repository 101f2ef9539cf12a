"""The embedded ``redis-server`` as a child of the tree: a dependency is supervised too.

``RedisServer`` owns the process (OTP's port owner): ``on_start`` starts the server (stopping a
stale one left on the data directory first) and answers ``Started`` once it answers ``PING``;
then it watches it every ``WATCH_PERIOD_S``. When the server dies (SIGKILL, a crash, OOM
killer) the owner logs it at WARNING with the reason and its log tail, and exits: its
supervisor (``redis``, one_for_one, with the ``redis.restart_backoff_*`` backoff) starts a new
owner, which starts a new server on the same socket, with the same data (RDB plus AOF). The
rest of the tree is not restarted: the actors that use Redis ride the outage out
(:mod:`memesys.storage.availability`) and reconnect by themselves.

A server that stops answering (SIGSTOP, a hang) is killed and restarted the same way after
``redis.hang_timeout_s`` without an answer to ``PING`` (0 disables this check).

Every transition is a WARNING: died (how), started again (what was found), not answering
(how long), killed. With a configured ``REDIS_URL`` there is no such child: the daemon does not
own that server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, WakeupMessage

from actors.base import BaseActor
from memesys.config import RedisConfig
from memesys.storage.connection import EmbeddedRedis

log = logging.getLogger("memesys.tree.redis_server")

WATCH_PERIOD_S = 0.1  # how often the owner looks at its server's process
PING_PERIOD_S = 1.0  # how often it pings it (only when hang_timeout_s is set)
_WATCH = "watch"


@dataclass(frozen=True)
class RedisServerArgs:
    data_dir: str
    socket_path: str  # chosen by the daemon (EmbeddedRedis.plan): the same on every restart
    hang_timeout_s: float = 10.0  # kill a server that does not answer PING this long; 0: never
    start_timeout_s: float = 5.0  # under the supervisor's 10 s start limit
    durability: str = "fsync"  # storage.durability


class RedisServer(BaseActor):
    kind = "dependency"

    def on_start(self, args: RedisServerArgs) -> None:
        self.args = args
        self.server = EmbeddedRedis(
            args.data_dir, args.start_timeout_s, args.socket_path, args.durability
        )
        started = time.monotonic()
        self.server.start()
        if self.server.previous:
            log.warning(
                "embedded redis-server started again: pid %d in %.0f ms (%s)",
                self.server.pid,
                (time.monotonic() - started) * 1000,
                self.server.previous,
            )
        else:
            log.info("embedded redis-server started: pid %d", self.server.pid)
        self.last_answer = time.monotonic()
        self.last_ping = self.last_answer
        self.exiting = False
        self.wakeupAfter(WATCH_PERIOD_S, payload=_WATCH)

    def on_stop(self) -> None:
        self.server.stop()  # SHUTDOWN SAVE; a dead server is only reaped

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and msg.payload == _WATCH:
            self._watch()
        else:
            super().receive_other(msg, sender)

    def _watch(self) -> None:
        if self.exiting:
            return
        if self.server.pid is None:
            log.warning(
                "embedded redis-server died (%s); its supervisor restarts it. Log tail:\n%s",
                self.server.exit_reason(),
                self.server.log_tail(),
            )
            self._die()
            return
        now = time.monotonic()
        if self.args.hang_timeout_s > 0 and now - self.last_ping >= PING_PERIOD_S:
            self.last_ping = now
            if self.server.answers():
                self.last_answer = time.monotonic()
            elif now - self.last_answer >= self.args.hang_timeout_s:
                log.warning(
                    "embedded redis-server pid %d has not answered PING for %.1f s; "
                    "killing it so that its supervisor restarts it",
                    self.server.pid,
                    now - self.last_answer,
                )
                self.server.kill()
                self._die()
                return
        self.wakeupAfter(WATCH_PERIOD_S, payload=_WATCH)

    def _die(self) -> None:
        """An abnormal exit (not a granted stop): the supervisor restarts us with backoff."""
        self.exiting = True
        self.send(self.myAddress, ActorExitRequest())


def plan(
    cfg: RedisConfig, durability: str, data_dir: str
) -> tuple[str, EmbeddedRedis | None, RedisServerArgs | None]:
    """The Redis URL every actor is given and, without a configured ``cfg.url``, the embedded
    server's planner (the daemon calls ``stop_stale()`` and ``release()`` on it at the end)
    and the args of its owner in the tree. Nothing is started here: the tree starts it."""
    if cfg.url.strip():
        return cfg.url.strip(), None, None
    embedded = EmbeddedRedis(data_dir, durability=durability)
    target = embedded.plan()
    args = RedisServerArgs(
        data_dir, str(embedded.socket_path), cfg.hang_timeout_s, durability=durability
    )
    return target.url, embedded, args
