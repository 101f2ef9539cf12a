"""What one process knows of a pool whose workers it asks directly.

A pool pushes :class:`~actors.messages.Members` to its subscribers whenever a worker starts,
exits or stops taking work. With that list a :class:`~actors.bridge.Directory` sends each
request straight to a worker, sparing the pool's hop: two of the four Thespian messages a
request through the pool costs, and most of its latency. The pool's duties for these requests
move here: the route counts the requests this process has on each worker (to pick the least
loaded and to refuse past ``max_outstanding``) and names the ones a worker held when it
exited, so that they are answered ``worker_lost`` or retried rather than left hanging.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from thespian.actors import ActorAddress

from actors.dispatch import least_loaded, refusal
from actors.messages import Failure, Members


@dataclass(eq=False)
class Worker:
    """One worker as this process sees it: where it is, and our requests it holds."""

    name: str
    address: ActorAddress
    accepting: bool
    held: set[str] = field(default_factory=set)


class PoolRoute:
    """One pool as this process sees it: its live workers, as the pool last listed them,
    and our requests on each."""

    def __init__(self, pool: ActorAddress) -> None:
        self.pool = pool
        self.version = -1
        self.max_outstanding = 1
        self._workers: list[Worker] = []

    def update(self, members: Members) -> list[str]:
        """Apply a newer list of workers; returns the correlation ids of our requests on the
        workers it no longer lists (a restarted worker is listed at a new address)."""
        if members.version <= self.version:
            return []
        self.version, self.max_outstanding = members.version, members.max_outstanding
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

    def pick(self) -> Optional[Worker]:
        """The accepting worker holding the fewest of our requests (None: none accepts)."""
        return least_loaded([w for w in self._workers if w.accepting], lambda w: len(w.held))

    def refusal(self, where: str, worker: Worker) -> Optional[Failure]:
        """``overloaded`` when even the least loaded worker holds ``max_outstanding`` of ours."""
        return refusal(where, self.size, len(worker.held), self.max_outstanding)

    @property
    def size(self) -> int:
        return sum(w.accepting for w in self._workers)

    def retire(self) -> list[str]:
        """The pool is gone, and its workers with it: every request we have on them."""
        lost = [cid for worker in self._workers for cid in worker.held]
        self._workers = []
        return lost
