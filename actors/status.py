"""Status gathering: a supervisor answers a status query with what its children answer.

Every running child is asked (a supervisor for its sub-tree, a worker for its load) with
:data:`STATUS_NESTED_FRACTION` of the query's own budget, so that a child supervisor's
answer (its own unresponsive children marked) arrives in time. The query is answered when
all have answered, or when its budget is spent: a child that has not answered by then is
reported ``unresponsive``. Always answered, always cleaned up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from thespian.actors import ActorAddress

from actors.child import Child, ChildState
from actors.deadlines import after
from actors.messages import Reply, Request, StatusQuery, new_correlation_id
from actors.wakeups import StatusDue, Wakeup

__all__ = ["STATUS_MIN_S", "STATUS_NESTED_FRACTION", "Gather", "StatusGathering"]

# A supervisor asks its children for their status with this fraction of its own budget, so
# that a child supervisor's answer (its own unresponsive children marked) arrives in time.
STATUS_NESTED_FRACTION = 0.6
STATUS_MIN_S = 0.05


@dataclass(eq=False)
class Gather:
    """A status query waiting for its running children's answers, until its own deadline."""

    request: Request
    sender: ActorAddress
    gid: str = field(default_factory=new_correlation_id)
    asked: dict[str, tuple[Child, ActorAddress]] = field(default_factory=dict)  # by cid
    answers: dict[str, object] = field(default_factory=dict)  # by cid; None: a failure


# Answer ``request`` from ``sender``: the children's answers, and who did not answer in time.
Report = Callable[[Request, ActorAddress, dict[Child, object], set[Child]], None]


class StatusGathering:
    """One supervisor's status queries in progress. ``send`` and ``wake`` are the
    supervisor's; ``report`` builds and sends the answer."""

    def __init__(
        self,
        send: Callable[[ActorAddress, Request], None],
        wake: Callable[[float, Wakeup], None],
        report: Report,
    ) -> None:
        self._send, self._wake, self._report = send, wake, report
        self.by_query: dict[str, Gather] = {}  # by the correlation id of a child's query
        self.pending: dict[str, Gather] = {}  # by gather id, until answered

    def ask(self, request: Request, sender: ActorAddress, children: list[Child]) -> None:
        """Start answering the :class:`StatusQuery` ``request``."""
        query: StatusQuery = request.payload
        budget = max(STATUS_MIN_S, query.timeout_s)
        nested = StatusQuery(max(STATUS_MIN_S, budget * STATUS_NESTED_FRACTION))
        gather = Gather(request, sender)
        for child in children:
            if child.running:
                assert child.address is not None  # running
                cid = new_correlation_id()
                gather.asked[cid] = (child, child.address)
                self.by_query[cid] = gather
                self._send(child.address, Request(nested, cid, deadline=after(nested.timeout_s)))
        if not gather.asked:
            self._finish(gather)
            return
        self.pending[gather.gid] = gather
        self._wake(budget, StatusDue(gather.gid))

    def answered(self, reply: Reply) -> None:
        """A child's answer (a late one, to a query already answered, is dropped)."""
        gather = self.by_query.pop(reply.correlation_id, None)
        if gather is None:
            return
        gather.answers[reply.correlation_id] = reply.payload if reply.ok else None
        if len(gather.answers) == len(gather.asked):
            self._finish(gather)

    def due(self, gid: str) -> None:
        """The budget of query ``gid`` is spent."""
        gather = self.pending.get(gid)
        if gather is not None:  # else: every child answered in time
            self._finish(gather)

    def child_gone(self, child: Child) -> None:
        """A child that exited will not answer: the queries waiting for it need not wait."""
        for gather in list(self.pending.values()):
            for cid, (asked, _) in gather.asked.items():
                if asked is child and cid not in gather.answers:
                    self.by_query.pop(cid, None)
                    gather.answers[cid] = None
            if len(gather.answers) == len(gather.asked):
                self._finish(gather)

    def _finish(self, gather: Gather) -> None:
        for cid in gather.asked:
            self.by_query.pop(cid, None)
        self.pending.pop(gather.gid, None)
        answers: dict[Child, object] = {}
        unresponsive: set[Child] = set()
        for cid, (child, address) in gather.asked.items():
            if child.address is None or child.address != address:
                continue  # it exited or restarted meanwhile: its own state says so
            if cid in gather.answers:
                answers[child] = gather.answers[cid]
            elif child.state is ChildState.RUNNING:
                unresponsive.add(child)
        self._report(gather.request, gather.sender, answers, unresponsive)
