"""What one process knows of a pool whose workers it asks directly.

A pool pushes :class:`~actors.messages.Members` to its subscribers whenever a worker starts,
exits or stops taking work. With that list a :class:`~actors.bridge.Directory` sends each
request straight to a worker, sparing the pool's hop: two of the four Thespian messages a
request through the pool costs, and most of its latency. The pool's duties for these requests
move here: the route counts the requests this process has on each worker (to pick the least
loaded, to pass over a worker whose oldest request is overdue, and to refuse past
``max_outstanding``: :func:`actors.dispatch.pick`) and names the ones a worker held when it
exited, so that they are answered ``worker_lost`` or retried rather than left hanging.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from thespian.actors import ActorAddress

from actors.dispatch import pick, refusal
from actors.messages import Failure, Members


@dataclass(eq=False)
class Worker:
    """One worker as this process sees it: where it is, and our requests it holds (by
    correlation id, with the ``time.monotonic()`` each was sent at, oldest first)."""

    name: str
    address: ActorAddress
    accepting: bool
    held: dict[str, float] = field(default_factory=dict)

    @property
    def oldest(self) -> float | None:
        return next(iter(self.held.values()), None)


class PoolRoute:
    """One pool as this process sees it: its live workers, as the pool last listed them,
    and our requests on each."""

    def __init__(self, pool: ActorAddress, token: str = "") -> None:
        self.pool = pool
        self.token = token  # of the Watch that tells us when the pool is gone
        self.version = -1
        self.max_outstanding = 1
        self.overdue_s: float | None = None
        self._workers: list[Worker] = []
        self.waiting: set[str] = set()  # our requests sent to the pool itself (none accepted)
        self.retired = False  # the pool is gone: nothing is sent through this route any more

    def update(self, members: Members) -> list[str]:
        """Apply a newer list of workers; returns the correlation ids of our requests on the
        workers it no longer lists (a restarted worker is listed at a new address)."""
        if members.version <= self.version:
            return []
        self.version, self.max_outstanding = members.version, members.max_outstanding
        self.overdue_s = members.overdue_s
        gone, self._workers = self._workers, []
        for member in members.workers:
            known = next((w for w in gone if w.address == member.address), None)
            if known is None:
                known = Worker(member.name, member.address, member.accepting)
            else:
                gone.remove(known)
                known.accepting = member.accepting
            self._workers.append(known)
        return [cid for worker in gone for cid in worker.held]

    def accepting(self) -> bool:
        """Whether any worker takes work (else the pool holds requests until one does)."""
        return any(w.accepting for w in self._workers)

    def pick(self) -> Worker | None:
        """The worker for our next request by the pool's rule (:func:`actors.dispatch.pick`):
        accepting, below ``max_outstanding`` of ours, not overdue while another is not, least
        loaded. None: every accepting worker holds ``max_outstanding`` (see :meth:`refusal`)
        or none accepts (see :meth:`accepting`)."""
        return pick(
            [w for w in self._workers if w.accepting],
            lambda w: len(w.held),
            lambda w: w.oldest,
            self.max_outstanding,
            self.overdue_s,
            time.monotonic(),
        )

    def refusal(self, where: str) -> Failure:
        """``overloaded``: every accepting worker holds ``max_outstanding`` of ours."""
        return refusal(where, self.size, self.max_outstanding)

    @property
    def size(self) -> int:
        return sum(w.accepting for w in self._workers)

    def retire(self) -> list[str]:
        """The pool is gone, and its workers with it: every request we have on them or on the
        pool itself."""
        lost = [cid for worker in self._workers for cid in worker.held] + list(self.waiting)
        self._workers, self.retired = [], True
        return lost
