"""Health checks: a supervisor pings its running children and kills the ones that hang.

A pid check cannot see a child that is alive but does not work (SIGSTOPped, hung,
deadlocked): only an answer can. Every running child is pinged every period; one that has
given no sign of work (no Pong, no Heartbeat, no Started) for ``health_timeout_s`` is
killed, process tree and all, and its supervisor restarts it like a crashed one. (A busy
child's ping may wait behind its queued work, but taking up each message it sends a
Heartbeat, at most twice a period: only a child stuck in one handler, or frozen, falls
silent.) The next round is planned for the next period, or earlier for the first child whose
silence reaches the timeout, so a frozen child is killed ``health_timeout_s`` after its last
sign of work.

Silent is not always hung: a child in one long CPU-bound handler, or whose answers wait
behind its own transmits to slow receivers, runs but says nothing. So a child silent for the
timeout whose process visibly worked since the previous reading (CPU time or context
switches advanced; a SIGSTOPped one never does) is given up to :data:`BUSY_GRACE` timeouts
of silence, checked again each period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from thespian.actors import ActorAddress

from actors.child import Child
from actors.deadlines import after
from actors.messages import Ping, Reply, Request, new_correlation_id
from actors.processes import kill_tree, process_progress
from actors.wakeups import HealthRound, Wakeup

__all__ = ["BUSY_GRACE", "HEALTH_LATE_S", "HealthChecks"]

log = logging.getLogger("actors.supervisor")  # the supervisor's log: these are its decisions

# A health round that runs this much later than planned means the supervisor itself was held
# up (SIGSTOPped, starved): its children's silence is not theirs, they get a fresh timeout.
HEALTH_LATE_S = 0.5
# A silent child whose process visibly works (CPU time or context switches advance) is busy,
# not hung: it is killed only after this many health timeouts of silence.
BUSY_GRACE = 3


class HealthChecks:
    """One supervisor's health checks of its children (see the module doc).

    ``send`` and ``wake`` are the supervisor's; ``killed`` is told of a child this killed,
    so that the supervisor handles its exit as a crash (restart, intensity)."""

    def __init__(
        self,
        owner: str,
        interval_s: float,
        timeout_s: float,
        send: Callable[[ActorAddress, Request], None],
        wake: Callable[[float, Wakeup], None],
        killed: Callable[[Child], None],
    ) -> None:
        self.owner, self.interval_s, self.timeout_s = owner, interval_s, timeout_s
        self._send, self._wake, self._killed = send, wake, killed
        self._pings: dict[str, tuple[Child, ActorAddress, float]] = {}  # by correlation id
        self._due = 0.0  # monotonic time the next round was planned for
        self._pinged_at = 0.0  # monotonic time of the last round of pings

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    @property
    def period(self) -> float:
        """Pings go every ``health_interval_s``, and at least twice per timeout."""
        return min(self.interval_s, self.timeout_s / 2)

    @property
    def heartbeat_s(self) -> float:
        """How often a child tells it works (:class:`~actors.messages.Init`); 0: never."""
        return self.period / 2 if self.enabled else 0.0

    def start(self) -> None:
        if self.enabled:
            self._schedule(time.monotonic(), self.period)

    def _schedule(self, now: float, delay: float) -> None:
        self._due = now + delay
        self._wake(delay, HealthRound())

    def round(self, children: list[Child]) -> None:
        """Judge the silent children, ping the running ones, plan the next round."""
        now = time.monotonic()
        late = now - self._due
        running = [c for c in children if c.running]
        if late > HEALTH_LATE_S:
            # We were held up ourselves: the children's answers may be waiting in our mailbox.
            log.warning(
                "%s: health checks ran %.1f s late; its children get a fresh timeout",
                self.owner,
                late,
            )
            for child in running:
                child.heard()
        else:
            for child in running:
                self._judge(child, now)
            running = [c for c in running if c.running]
        timeout = self.timeout_s
        self._pings = {cid: p for cid, p in self._pings.items() if now - p[2] < timeout}
        period = self.period
        if now - self._pinged_at >= period * 0.9:
            self._pinged_at = now
            for child in running:
                assert child.address is not None  # running
                cid = new_correlation_id()
                self._pings[cid] = (child, child.address, now)
                self._send(child.address, Request(Ping(), cid, deadline=after(timeout)))
        due = min(
            [period - (now - self._pinged_at)]
            + [c.last_heard + timeout - now for c in running if not c.busy]
        )
        self._schedule(now, max(0.005, due))

    def answered(self, reply: Reply) -> bool:
        """Take ``reply`` if it answers a ping (any answer: the child works)."""
        ping = self._pings.pop(reply.correlation_id, None)
        if ping is None:
            return False
        child, address, _ = ping
        if child.address is not None and child.address == address:
            child.heard()
        return True

    def _judge(self, child: Child, now: float) -> None:
        """Kill ``child`` if it has been silent too long (see the module doc)."""
        silent, timeout, period = now - child.last_heard, self.timeout_s, self.period
        if silent < period and silent < timeout:
            return
        # Did its process run since a reading at least a period old? (CPU time is counted in
        # ticks of 10 ms: readings closer than that may show no change.)
        current = process_progress(child.pid) if child.pid is not None else None
        older = [reading for at, reading in child.progress if now - at >= period * 0.9]
        worked = (
            current is not None and bool(older) and older[-1] is not None and current != older[-1]
        )
        child.progress = [(at, r) for at, r in child.progress if now - at < 2 * period] + [
            (now, current)
        ]
        if silent < timeout:
            return
        if worked and silent < BUSY_GRACE * timeout:
            if not child.busy:
                child.busy = True
                log.warning(
                    "%s: child %s (pid %s) has answered nothing for %.1f s but its "
                    "process works; it gets up to %.0f s",
                    self.owner,
                    child.spec.name,
                    child.pid,
                    silent,
                    BUSY_GRACE * timeout,
                )
            return
        self._kill(child, silent)

    def _kill(self, child: Child, silent: float) -> None:
        log.warning(
            "%s: child %s (pid %s) answered no health check and took up no message "
            "for %.1f s (timeout %.1f s%s); killing it",
            self.owner,
            child.spec.name,
            child.pid,
            silent,
            self.timeout_s,
            ", though its process worked" if child.busy else "",
        )
        child.health_kills += 1
        child.why = f"killed by its health check: silent for {silent:.1f} s"
        if child.pid is not None:
            kill_tree(child.pid)
        self._killed(child)
