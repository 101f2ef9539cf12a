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
``redis.hang_timeout_s`` without an answer to ``PING`` (0 disables this check). Any answer is
one: a server that answers PING with an error (MISCONF when it cannot write to its disk) is
alive, and killing it would lose what it holds in memory only.

The server ends with its owner: it gets SIGTERM (it saves and exits) when the owner's process
ends, however it ends (``PR_SET_PDEATHSIG``): an owner killed outright, or the whole tree taken
down with a daemon that was (:mod:`actors.lifeline`), leaves no server behind. A server the
owner finds on the data directory all the same (one of an older daemon) is stopped first.

The owner also watches the data disk (every ``WATCH_PERIOD_S``): below ``redis.min_free_disk_mb``
free it makes the server refuse writes (:meth:`EmbeddedRedis.refuse_writes`; reads go on), and
above twice that it lets them in again. With ``appendfsync always`` a server whose AOF write
fails exits rather than answer, so a full disk never costs an acknowledged write; its new
server starts refusing writes while the disk is still full, instead of exiting at the next one.

Every transition is a WARNING: died (how, and the disk when it is full), started again (what
was found), writes refused (the free space) and accepted again, not answering (how long),
killed. With a configured ``REDIS_URL`` there is no such child: the daemon does not own that
server.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

import redis
from thespian.actors import ActorAddress, ActorExitRequest, WakeupMessage

from actors.base import BaseActor
from actors.lifeline import die_with_parent
from memesys.config import RedisConfig
from memesys.storage.connection import EmbeddedRedis
from memesys.telemetry import tracing

log = logging.getLogger("memesys.tree.redis_server")

WATCH_PERIOD_S = 0.1  # how often the owner looks at its server's process
PING_PERIOD_S = 1.0  # how often it pings it (only when hang_timeout_s is set)
_WATCH = "watch"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class RedisServerArgs:
    data_dir: str
    socket_path: str  # chosen by the daemon (EmbeddedRedis.plan): the same on every restart
    hang_timeout_s: float = 10.0  # kill a server that does not answer PING this long; 0: never
    start_timeout_s: float = 5.0  # under the supervisor's 10 s start limit
    durability: str = "fsync"  # storage.durability
    min_free_bytes: int = 64 * 2**20  # refuse writes below this free; accept them at twice it


class RedisServer(BaseActor):
    kind = "dependency"

    def on_start(self, args: RedisServerArgs) -> None:
        self.args = args
        self.server = EmbeddedRedis(
            args.data_dir,
            args.start_timeout_s,
            socket_path=args.socket_path,
            preexec=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM),
            durability=args.durability,
        )
        started = time.monotonic()
        free = self._free()
        self.refusing = free is not None and free < args.min_free_bytes
        self.refusing_since = started
        self.server.start(refuse_writes=self.refusing)
        if self.server.previous:
            log.warning(
                "embedded redis-server started again: pid %d in %.0f ms (%s)",
                self.server.pid,
                (time.monotonic() - started) * 1000,
                self.server.previous,
            )
        else:
            log.info("embedded redis-server started: pid %d", self.server.pid)
        if self.refusing:
            self._log_refusing(free)
        self.last_answer = time.monotonic()
        self.last_ping = self.last_answer
        self.exiting = False
        self.wakeupAfter(WATCH_PERIOD_S, payload=_WATCH)
        # After the server's fork: no batch thread is made again in a child that only execs.
        tracing.start(self.name)

    def on_stop(self) -> None:
        try:
            self.server.stop()  # SHUTDOWN SAVE; a dead server is only reaped
        finally:
            tracing.stop()

    def receive_other(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, WakeupMessage) and msg.payload == _WATCH:
            self._watch()
        else:
            super().receive_other(msg, sender)

    def _watch(self) -> None:
        if self.exiting:
            return
        if self.server.pid is None:
            free = self._free()
            disk = (
                f"; its data disk is full: {_mib(free)} free"
                if free is not None and free < self.args.min_free_bytes
                else ""
            )
            log.warning(
                "embedded redis-server died (%s%s); its supervisor restarts it. Log tail:\n%s",
                self.server.exit_reason(),
                disk,
                self.server.log_tail(),
            )
            self._die()
            return
        self._watch_disk()
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

    def _free(self) -> int | None:
        """Bytes free on the data disk (None: it cannot be read now)."""
        try:
            return shutil.disk_usage(self.args.data_dir).free
        except OSError:
            return None

    def _watch_disk(self) -> None:
        """Refuse writes below ``min_free_bytes`` free, accept them again at twice that."""
        free = self._free()
        if free is None:
            return
        bound = self.args.min_free_bytes * (2 if self.refusing else 1)
        refuse = free < bound
        if refuse == self.refusing:
            return
        try:
            self.server.refuse_writes(refuse)
        except redis.RedisError as exc:  # hung or dying: the checks below deal with it
            log.debug("embedded redis-server not told to refuse writes=%s: %s", refuse, exc)
            return
        self.refusing = refuse
        if refuse:
            self.refusing_since = time.monotonic()
            self._log_refusing(free)
        else:
            log.warning(
                "embedded redis-server accepts writes again: its data disk has %s free "
                "(writes were refused for %.1f s)",
                _mib(free),
                time.monotonic() - self.refusing_since,
            )

    def _log_refusing(self, free: int | None) -> None:
        log.warning(
            "embedded redis-server refuses writes: its data disk %s has %s free, under "
            "redis.min_free_disk_mb (%s); clients get 503 store_error until %s are free",
            self.args.data_dir,
            "?" if free is None else _mib(free),
            _mib(self.args.min_free_bytes),
            _mib(2 * self.args.min_free_bytes),
        )

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
        data_dir,
        str(embedded.socket_path),
        cfg.hang_timeout_s,
        durability=durability,
        min_free_bytes=int(cfg.min_free_disk_mb * 2**20),
    )
    return target.url, embedded, args
