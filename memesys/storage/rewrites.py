"""Erasure down to the files: after erasures, the server's append-only file and RDB snapshot are
rewritten by forks that start after them.

A deleted key leaves Redis's memory at once, but its bytes stay in the append-only file (every
write since its last rewrite) and in the RDB snapshot until they are rewritten, which Redis does
by itself only when the AOF has doubled past 64 MB. :class:`Rewrites` runs one catch-up at a
time, a step per call:

1. read ``made`` (the erasures so far, :mod:`memesys.storage.erasures`), then ``BGREWRITEAOF``.
   A rewrite already running does not count: its fork holds the erased keys. Redis answers an
   error while one runs, and the request is made again at the next step until one starts (or is
   scheduled behind a running snapshot, which forks later still).
2. wait until no rewrite runs or is scheduled (``INFO``); a failed one is asked for again.
3. the same with ``BGSAVE`` when the server keeps an RDB file (``save`` configured, or the file
   exists).
4. ``covered`` = the ``made`` read in 1: every erasure up to it is out of both files. One INFO
   line says so.

Each step sends a few quick commands and never waits: the caller calls it again. Erasures made
meanwhile wait for the next catch-up, which starts at most every quarter of the window. A
restarted server (a new ``run_id``) restarts the run: it may have loaded an old file. A debt
older than the window is a WARNING, once per catch-up.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis

from memesys.storage.erasures import Erasures

log = logging.getLogger("memesys.storage.rewrites")

MAX_PERIOD_S = 1.0


class Phase(enum.Enum):
    IDLE = "idle"
    AOF = "asking for an AOF rewrite"
    AOF_WAIT = "waiting for the AOF rewrite"
    RDB = "asking for an RDB snapshot"
    RDB_WAIT = "waiting for the RDB snapshot"


class Rewrites:
    """The catch-up of one server's files with the erasures made on it."""

    def __init__(
        self,
        client: redis.Redis,
        erasures: Erasures,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = client
        self.erasures = erasures
        self.window_s = window_s
        self.clock = clock
        self.phase = Phase.IDLE
        self.target = 0  # the erasures the run covers (made, read before its fork) ...
        self.target_at = 0.0  # ... at this time
        self.base = 0  # covered when the run started
        self.run_id = ""  # the server the run's fork was asked of
        self.owed_since: float | None = None  # when the oldest erasure not covered was seen
        self.started_at = -window_s  # when the last run started ...
        self.gap_s = window_s / 4  # ... and how long before the next may start
        self.warned = False
        self.reason = ""  # why the last step did not move on (for the WARNING)
        self.runs = 0  # catch-ups done

    @property
    def period_s(self) -> float:
        """How often to call :meth:`step`: a tenth of the window, at most a second."""
        return min(MAX_PERIOD_S, self.window_s / 10)

    def step(self) -> None:
        """Move the catch-up on by one step; never raises a Redis error (it is the reason the
        step did not move on, and the next step tries again)."""
        try:
            self._step()
        except redis.RedisError as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            log.debug("erasure rewrite: %s (%s)", self.reason, self.phase.value)
        now = self.clock()
        if (
            self.owed_since is not None
            and not self.warned
            and now - self.owed_since > self.window_s
        ):
            self.warned = True
            log.warning(
                "erasure rewrite: erasures made %.0f s ago are still in the Redis files "
                "(storage.erasure_window_s = %g s); %s%s",
                now - self.owed_since,
                self.window_s,
                self.phase.value,
                f"; last: {self.reason}" if self.reason else "",
            )

    def finish(self, within_s: float) -> bool:
        """Step until nothing is owed or ``within_s`` has passed (an ordered stop); whether
        nothing is owed."""
        deadline = self.clock() + within_s
        self.gap_s = 0.0  # there is no later run to leave room for
        while True:
            self.step()
            if self.phase is Phase.IDLE and self.owed_since is None:
                return True
            if self.clock() >= deadline:
                return False
            time.sleep(min(0.05, self.period_s))

    def _step(self) -> None:
        now = self.clock()
        if self.phase is Phase.IDLE:
            made, self.base = self.erasures.state()
            if made <= self.base:
                self.owed_since = None
                return
            if self.owed_since is None:
                self.owed_since = now
            if now - self.started_at < self.gap_s:
                return
            self.started_at, self.phase = now, Phase.AOF
        if self.phase is Phase.AOF:
            # read before the fork: every erasure counted is out of what it writes
            self.target, self.target_at = self.erasures.state()[0], now
            self.run_id = self._r.info("server")["run_id"]
            if self._asked(self._r.bgrewriteaof):
                self.phase = Phase.AOF_WAIT
            return
        if self.phase is Phase.AOF_WAIT:
            info = self._current()
            if info is None:
                return
            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                return
            if info["aof_last_bgrewrite_status"] != "ok":
                self.reason, self.phase = "the AOF rewrite failed", Phase.AOF
                return
            if not self._keeps_rdb():
                self._covered(now, "AOF rewritten")
                return
            self.phase = Phase.RDB
        if self.phase is Phase.RDB:
            if self._asked(self._r.bgsave):
                self.phase = Phase.RDB_WAIT
            return
        if self.phase is Phase.RDB_WAIT:
            info = self._current()
            if info is None or info["rdb_bgsave_in_progress"]:
                return
            if info["rdb_last_bgsave_status"] != "ok":
                self.reason, self.phase = "the RDB snapshot failed", Phase.RDB
                return
            self._covered(now, "AOF rewritten, RDB saved")

    def _asked(self, command: Callable[[], Any]) -> bool:
        """Whether the server took ``command`` (a fork started or scheduled after this call);
        an error answer (one is running) means: ask again at the next step."""
        try:
            command()
        except redis.ResponseError as exc:
            self.reason = str(exc)
            return False
        return True

    def _current(self) -> dict[str, Any] | None:
        """INFO of the server the run asked, or None (and the run starts over) if it was
        restarted since: the files it loaded may be the old ones."""
        info = self._r.info("default")
        if info["run_id"] != self.run_id:
            self.reason, self.phase = "the server restarted", Phase.AOF
            return None
        return info

    def _keeps_rdb(self) -> bool:
        """Whether the server writes an RDB file (``save`` set) or one is there already."""
        if cast(dict[str, str], self._r.config_get("save")).get("save"):
            return True
        folder = cast(dict[str, str], self._r.config_get("dir"))["dir"]
        name = cast(dict[str, str], self._r.config_get("dbfilename"))["dbfilename"]
        return (Path(folder) / name).exists()

    def _covered(self, now: float, files: str) -> None:
        owed = self.erasures.cover(self.target)
        self.runs += 1
        log.info(
            "erasure rewrite: %s; %d erasures out of the Redis files, %.2f s after the "
            "oldest was seen, %.2f s of rewriting (erasures so far: %d)",
            files,
            self.target - self.base,
            now - (self.owed_since if self.owed_since is not None else now),
            now - self.started_at,
            self.target,
        )
        self.phase, self.reason, self.warned = Phase.IDLE, "", False
        # erasures counted after the target was read wait for the next run
        self.owed_since = self.target_at if owed > 0 else None
