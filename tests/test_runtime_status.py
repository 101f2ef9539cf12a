"""Status queries on real processes: always answered within their budget, SIGSTOPped children
reported ``unresponsive``, nothing left pending; workers report the work they hold themselves.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from thespian.actors import ActorSystem

from actors.messages import ChildStatus, Request, StatusQuery, TreeStatus, WhereIs
from actors.spec import ChildSpec, PoolArgs, SupervisorArgs
from tests.support.actor_system import RunningSystem, collect, send_all
from tests.support.sample_actors import Journal
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.timeout(30)

RECORDER = "tests.support.sample_actors.Recorder"
SLEEPER = "tests.support.sample_actors.Sleeper"
SUPERVISOR = "actors.supervisor.Supervisor"
INTROSPECTED = "tests.support.sample_actors.Introspected"


def child(tree: TreeStatus | ChildStatus, name: str) -> ChildStatus | None:
    return next((c for c in tree.children if c.name == name), None)


def timed_status(system: RunningSystem, timeout_s: float | None = None) -> tuple[float, TreeStatus]:
    query = StatusQuery() if timeout_s is None else StatusQuery(timeout_s)
    started = time.monotonic()
    reply = system.ask(system.root, query, timeout=5)
    elapsed = time.monotonic() - started
    assert reply.ok, f"the status query was not answered: {reply.error}"
    return elapsed, reply.payload


def test_a_stopped_child_is_reported_unresponsive_and_the_query_answered(
    actor_system: RunningSystem, tmp_path: Path
) -> None:
    system = actor_system
    journal = Journal(str(tmp_path / "journal"))
    root = system.start(
        ChildSpec(
            "root",
            INTROSPECTED,
            SupervisorArgs(
                (
                    ChildSpec(
                        "a", SUPERVISOR, SupervisorArgs((ChildSpec("a1", RECORDER, journal),))
                    ),
                    ChildSpec(
                        "b", SUPERVISOR, SupervisorArgs((ChildSpec("b1", RECORDER, journal),))
                    ),
                    ChildSpec("c", RECORDER, journal),
                )
            ),
        )
    )
    stopped = child(system.status(), "b").pid
    os.kill(stopped, signal.SIGSTOP)  # the second child: the first one answers
    try:
        elapsed, tree = timed_status(system, 0.5)
        # Waited for the stopped child up to the 0.5 s budget (0.45: its start a moment before);
        # 1 s (scaled) of margin.
        assert 0.45 <= elapsed < 0.5 + scaled(1.0), elapsed
        b = child(tree, "b")
        assert (b.state, b.pid, b.in_flight, b.children) == ("unresponsive", stopped, None, ())
        a = child(tree, "a")
        assert a.state == "running" and [c.name for c in a.children] == ["a1"]
        assert child(a, "a1").state == "running"
        assert (child(tree, "c").state, child(tree, "c").in_flight) == ("running", 0)
        assert system.ok(root, "pending-status") == (0, 0)  # nothing kept for b

        elapsed, tree = timed_status(system)  # the default budget bounds the admin's query
        # The default budget, plus 1 s (scaled) of margin.
        assert elapsed < StatusQuery().timeout_s + scaled(1.0), elapsed
        assert child(tree, "b").state == "unresponsive"
    finally:
        os.kill(stopped, signal.SIGCONT)
    time.sleep(0.2)  # an absence: b's late answers arrive, and are dropped, not kept
    assert system.ok(root, "pending-status") == (0, 0)
    elapsed, tree = timed_status(system, 0.5)
    # Everyone answers: tens of ms, no waiting for the 0.5 s deadline; 0.45 s is that deadline
    # less the same 0.05 s as above, not scaled (past it, the bound would mean nothing).
    assert elapsed < 0.45, elapsed
    assert [c.state for c in tree.children] == ["running"] * 3
    assert [c.name for c in child(tree, "b").children] == ["b1"]


def test_an_unresponsive_worker_is_marked_by_its_own_supervisor(
    actor_system: RunningSystem, tmp_path: Path
) -> None:
    """The nested query gets a smaller budget: the sub-supervisor answers in time and marks
    its own stopped worker, instead of being marked unresponsive itself."""
    system = actor_system
    journal = Journal(str(tmp_path / "journal"))
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec(
                        "sub",
                        SUPERVISOR,
                        SupervisorArgs(
                            (ChildSpec("w1", RECORDER, journal), ChildSpec("w2", RECORDER, journal))
                        ),
                    ),
                )
            ),
        )
    )
    stopped = child(child(system.status(), "sub"), "w2").pid
    os.kill(stopped, signal.SIGSTOP)
    try:
        elapsed, tree = timed_status(system, 1.0)
        # The sub-supervisor's deadline (a share of the 1 s budget), not the root's: under 1 s,
        # not scaled (it is the budget itself).
        assert elapsed < 1.0, elapsed
        sub = child(tree, "sub")
        assert sub.state == "running"
        assert [(w.name, w.state) for w in sub.children] == [
            ("w1", "running"),
            ("w2", "unresponsive"),
        ]
        assert child(sub, "w1").in_flight == 0 and child(sub, "w2").in_flight is None
    finally:
        os.kill(stopped, signal.SIGCONT)


def test_workers_report_the_work_they_hold(
    actor_system: RunningSystem, context: ActorSystem, tmp_path: Path
) -> None:
    """Requests sent to a pool's workers directly (as a directory does) never pass the pool's
    books; the workers' own counts show them, per worker and summed up the tree."""
    system = actor_system
    root = system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec("pool", "actors.pool.Pool", PoolArgs(SLEEPER, 2)),
                    ChildSpec("solo", SLEEPER),
                    ChildSpec("rec", RECORDER, Journal(str(tmp_path / "journal"))),
                )
            ),
        )
    )
    worker = {
        name: system.ok(root, WhereIs(f"pool/{name}")).address for name in ("worker-0", "worker-1")
    }
    solo = system.ok(root, WhereIs("solo")).address
    requests = (
        send_all(context, worker["worker-0"], (Request(1.0) for _ in range(3)))
        + send_all(context, worker["worker-1"], [Request(1.0)])
        + send_all(context, solo, (Request(1.0) for _ in range(2)))
    )

    _, tree = timed_status(system, 1.0)
    pool = child(tree, "pool")
    assert [(w.name, w.in_flight) for w in pool.children] == [("worker-0", 3), ("worker-1", 1)]
    assert pool.in_flight == 4
    assert (child(tree, "solo").in_flight, child(tree, "rec").in_flight) == (2, 0)
    assert tree.in_flight == 6

    assert all(r.ok for r in collect(context, requests, 5).values())
    wait_for(
        lambda: timed_status(system, 1.0)[1].in_flight == 0, 2, what="the workers' counts back to 0"
    )
