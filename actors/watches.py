"""Watches: who is told :class:`~actors.messages.Gone` when a child exits, and when.

A :class:`~actors.messages.WhereIs` that carries a :class:`~actors.messages.Watch` asks
every supervisor on its way to tell the asker when what it found (or a supervisor between
the root and it) exits: its address is dead, and what the asker sent there will never be
answered. Thespian reports an exit before the exiting process has sent its last messages
(answers among them), and a process ends only once its sends are acknowledged; so a Gone
notice waits until the exited process and the processes under it have ended (polled every
:data:`GONE_POLL_S`, at most :data:`GONE_MAX_S`): the answers arrive first, and the watcher
fails only what truly was lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from thespian.actors import ActorAddress

from actors.child import Child
from actors.messages import Gone, Watch
from actors.processes import living_tree, process_alive
from actors.wakeups import PollGone, Wakeup

__all__ = ["GONE_MAX_S", "GONE_POLL_S", "MAX_WATCHERS", "GoneNotices", "add_watch"]

GONE_POLL_S = 0.005
GONE_MAX_S = 1.0  # a Gone waits at most this long for the exited process tree to end
MAX_WATCHERS = 16  # past this many on one child, the watches of dead askers are dropped


def add_watch(child: Child, watcher: ActorAddress, watch: Watch) -> None:
    """``watcher`` is told Gone when ``child`` exits; one watch per watcher and path."""
    kept = [(a, w) for a, w in child.watchers if not (a == watcher and w.path == watch.path)]
    if len(kept) >= MAX_WATCHERS:
        kept = [(a, w) for a, w in kept if process_alive(w.pid)]
    child.watchers = kept + [(watcher, watch)]


Notices = list[tuple[ActorAddress, Gone]]


class GoneNotices:
    """The Gone notices of exited children, each held until the child's processes end."""

    def __init__(
        self, send: Callable[[ActorAddress, Gone], None], wake: Callable[[float, Wakeup], None]
    ) -> None:
        self._send, self._wake = send, wake
        self._waiting: list[tuple[list[int], float, Notices]] = []  # (pids, deadline, notices)

    def child_exited(self, child: Child) -> None:
        """``child`` has exited: its watchers (those still alive) are told, once its
        processes have ended."""
        watchers, child.watchers = child.watchers, []
        if not watchers:
            return
        notices = [
            (address, Gone(watch.token, watch.path))
            for address, watch in watchers
            if process_alive(watch.pid)
        ]
        pids = living_tree(child.pid) if child.pid else []
        if not pids:
            self._deliver(notices)
            return
        if not self._waiting:
            self._wake(GONE_POLL_S, PollGone())
        self._waiting.append((pids, time.monotonic() + GONE_MAX_S, notices))

    def poll(self) -> None:
        """Send the notices whose processes have ended (or waited :data:`GONE_MAX_S`)."""
        now = time.monotonic()
        waiting = []
        for pids, deadline, notices in self._waiting:
            pids = [pid for pid in pids if process_alive(pid)]
            if pids and now < deadline:
                waiting.append((pids, deadline, notices))
                continue
            self._deliver(notices)
        self._waiting = waiting
        if waiting:
            self._wake(GONE_POLL_S, PollGone())

    def flush(self) -> None:
        """The supervisor exits: every notice still waiting goes now."""
        waiting, self._waiting = self._waiting, []
        for _, _, notices in waiting:
            self._deliver(notices)

    def _deliver(self, notices: Notices) -> None:
        for address, gone in notices:
            self._send(address, gone)
