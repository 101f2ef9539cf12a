"""Watch the actor system's own processes: when the application is gone, the daemon goes.

The root supervisor is the application (OTP): if it exits, or if Thespian's admin or logger
dies (the logger's death takes the whole system down within half a second; the admin's
leaves nobody to route a message), no request can be served any more and the daemon must
exit non-zero at once so a process manager restarts it. One exit is not a failure: an
ordered stop of the tree that someone asked for (``memesys-admin shutdown``).

Three signals, so each fault is told apart within the poll period:

- the root's :class:`~actors.messages.Down` answer to a standing
  :class:`~actors.messages.Monitor` says whether its exit was requested or why it gave up;
- a pid check of the admin, the logger and the root every ``POLL_S`` catches a process
  killed outright (no Down comes);
- a ping of the root every ``PING_PERIOD_S`` catches a root that is alive but stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import psutil
from thespian.actors import ActorAddress

from actors.bridge import AskTimeout, Bridge, RemoteFailure
from actors.messages import Down, Monitor, Ping, Pong
from actors.system import admin_pid

log = logging.getLogger("memesys.cli.watchdog")

POLL_S = 0.25
PING_PERIOD_S = 1.0
PING_TIMEOUT_S = 1.0
PING_MISSES = 2
DOWN_GRACE_S = 0.5  # a dead root's Down may still be on its way: wait this long for it
MONITOR_RENEW_S = 3600.0


@dataclass(frozen=True)
class Verdict:
    """How the daemon ends: its exit status and why (logged)."""

    status: int
    reason: str


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SystemWatch:
    """The admin, the logger and the root supervisor of one running actor system."""

    def __init__(self, bridge: Bridge, root: ActorAddress, admin_port: int) -> None:
        self.bridge = bridge
        self.root = root
        self.admin_port = admin_port
        self.processes: dict[str, psutil.Process] = {}

    async def find_processes(self) -> None:
        """The admin (holding the admin port), the root (its Pong) and the logger (the
        admin's other child): recorded once, checked by pid from then on."""
        pong: Pong = await self.bridge.ask(self.root, Ping(), 5.0)
        admin = await asyncio.to_thread(admin_pid, self.admin_port)
        if admin is None:
            raise RuntimeError(f"no actor-system admin listens on port {self.admin_port}")
        admin_proc, root_proc = psutil.Process(admin), psutil.Process(pong.pid)
        self.processes = {"Thespian admin": admin_proc, "root supervisor": root_proc}
        loggers = [p for p in admin_proc.children() if p.pid != pong.pid]
        if len(loggers) == 1:
            self.processes["Thespian logger"] = loggers[0]
        else:  # a Thespian that forks otherwise: the admin and root checks still hold
            log.warning(
                "cannot tell Thespian's logger among the admin's children %s",
                [p.pid for p in loggers],
            )

    async def watch(self) -> Verdict:
        """Return once the actor system can no longer serve (or was stopped on request)."""
        monitor = asyncio.create_task(self._monitor())
        try:
            return await self._poll(monitor)
        finally:
            monitor.cancel()

    async def _poll(self, monitor: asyncio.Task[Down | None]) -> Verdict:
        misses, next_ping = 0, time.monotonic() + PING_PERIOD_S
        while True:
            if monitor.done() and (gone := monitor.result()) is not None:
                return self._verdict(gone)
            dead = [name for name, proc in self.processes.items() if not _alive(proc)]
            if dead:
                down = await self._down_within(monitor, DOWN_GRACE_S)
                if down is not None:
                    return self._verdict(down)
                return Verdict(1, f"the {' and the '.join(dead)} died")
            if time.monotonic() >= next_ping:
                misses = 0 if await self._pings() else misses + 1
                next_ping = time.monotonic() + PING_PERIOD_S
                if misses >= PING_MISSES:
                    return Verdict(
                        1,
                        f"the root supervisor has not answered for {misses * PING_PERIOD_S:.0f} s",
                    )
            await asyncio.sleep(POLL_S)

    async def _pings(self) -> bool:
        try:
            await self.bridge.ask(self.root, Ping(), PING_TIMEOUT_S)
            return True
        except (AskTimeout, RemoteFailure):
            return False

    async def _monitor(self) -> Down | None:
        """The root's Down, or None if it can no longer be asked (then a pid check decides)."""
        while True:
            try:
                down: Down = await self.bridge.ask(self.root, Monitor(), MONITOR_RENEW_S)
                return down
            except AskTimeout:
                continue  # renewed: the root replaces our older monitor
            except RemoteFailure:
                return None

    @staticmethod
    async def _down_within(monitor: asyncio.Task[Down | None], seconds: float) -> Down | None:
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(monitor)
        except TimeoutError:
            return None

    @staticmethod
    def _verdict(down: Down) -> Verdict:
        if down.requested:
            return Verdict(0, "the actor tree was stopped on request (memesys-admin shutdown)")
        return Verdict(1, f"the root supervisor gave up: {down.reason}")
