"""One daemon per data directory, and what a dead one left behind.

The daemon holds an exclusive ``flock`` on ``<data_dir>/daemon.lock`` while it runs, with its
pid, its start time and its admin port written in the file. Every process of its actor tree is
forked from it and inherits the lock (one open file description): the lock stays held for as
long as any process of that tree lives, so the kernel itself keeps the tree's membership.

A start that finds the lock held finds one of two things:

- the daemon written in the file still runs: a second daemon must not share its data and
  Redis, so the start is refused with a line saying how to stop the first one;
- that daemon is gone: what holds the lock is the tree it left (stranded because its admin
  could not take it down: stopped, or a daemon of an older version). Those processes, found by
  the lock they hold (``/proc/<pid>/fdinfo`` names the process that took a lock: the dead
  daemon, for every process that inherited it), are killed and the start goes on. An embedded
  ``redis-server`` of theirs is stopped by the new tree's Redis owner (its pidfile).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger("memesys.cli.data_lock")

LOCK_FILE = "daemon.lock"
CLEAR_TIMEOUT_S = 5.0  # for a dead daemon's processes to be gone after SIGKILL
POLL_S = 0.05


class StartRefused(RuntimeError):
    """The daemon must not start; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class Owner:
    """The daemon that holds a data directory's lock, as it wrote itself in the file."""

    pid: int
    started: float  # the process's start time (psutil): a reused pid is not the same daemon
    admin_port: int

    @classmethod
    def me(cls, admin_port: int) -> Owner:
        return cls(os.getpid(), psutil.Process().create_time(), admin_port)

    def running(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.01
        except psutil.Error:
            return False


class DataDirLock:
    """The lock of one data directory (``acquire`` at start, ``release`` at exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, admin_port: int) -> None:
        """Take the lock, first killing a dead daemon's processes that still hold it; raises
        :class:`StartRefused` if a live daemon holds it or it cannot be cleared in time."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._take(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(Owner.me(admin_port))).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Let go of the lock (the tree's processes, which share it, have ended by now)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _take(self, fd: int) -> None:
        deadline = time.monotonic() + CLEAR_TIMEOUT_S
        killed: set[int] = set()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            owner = _read(fd)  # None: a daemon that has just taken it and not yet written
            if owner is not None and owner.running():
                raise StartRefused(
                    f"a memesys daemon (pid {owner.pid}) already runs on data directory "
                    f"{self.path.parent}; stop it first (SIGTERM, or `memesys-admin "
                    f"--admin-port {owner.admin_port} shutdown`)"
                )
            if owner is not None:
                left = [p for p in holders(self.path, owner.pid) if p.pid not in killed]
                if left:
                    log.warning(
                        "the daemon of an earlier run on %s (pid %d) is gone, but %d processes "
                        "of its actor tree still run (pids %s): killing them",
                        self.path.parent,
                        owner.pid,
                        len(left),
                        " ".join(str(p.pid) for p in left),
                    )
                    for proc in left:
                        _kill(proc)
                    killed.update(p.pid for p in left)
            if time.monotonic() >= deadline:
                port = "PORT" if owner is None else owner.admin_port
                raise StartRefused(
                    f"data directory {self.path.parent} is still locked after "
                    f"{CLEAR_TIMEOUT_S:g} s by a daemon this start cannot identify; stop it "
                    f"(`memesys-admin --admin-port {port} shutdown`) and start again"
                )
            time.sleep(POLL_S)


def _read(fd: int) -> Owner | None:
    try:
        return Owner(**json.loads(os.pread(fd, 4096, 0)))
    except (ValueError, TypeError):
        return None


def _kill(proc: psutil.Process) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass


def holders(path: Path, locker: int) -> list[psutil.Process]:
    """The processes that hold the ``flock`` ``locker`` took on ``path``: they have a
    descriptor on it whose ``/proc/<pid>/fdinfo`` names that lock (``lock: 1: FLOCK ADVISORY
    WRITE <locker> ...``), inherited from ``locker``. Another lock on the file, or a reader
    of it, is not theirs."""
    target = os.stat(path)
    found = []
    for proc in psutil.process_iter():
        try:
            for entry in os.scandir(f"/proc/{proc.pid}/fd"):
                st = os.stat(entry.path)
                if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
                    continue
                with open(f"/proc/{proc.pid}/fdinfo/{entry.name}") as info:
                    if any(_flock_of(line) == locker for line in info):
                        found.append(proc)
                        break
        except OSError:  # gone, or not ours to read
            continue
    return found


def _flock_of(fdinfo_line: str) -> int | None:
    """The pid that took the flock an fdinfo ``lock:`` line describes, else None."""
    fields = fdinfo_line.split()
    if len(fields) > 5 and fields[0] == "lock:" and fields[2] == "FLOCK" and fields[5].isdigit():
        return int(fields[5])
    return None
