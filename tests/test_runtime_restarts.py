"""Restarts on real processes: a pool worker that asked to stop takes work again once restarted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from thespian.actors import ActorSystem

from actors.messages import ChildStatus, Request, TreeStatus, WhereIs
from actors.spec import ChildSpec, PoolArgs, SupervisorArgs
from tests.conftest import RunningSystem, alive, collect, send_all, wait_for
from tests.sample_actors import Journal

pytestmark = pytest.mark.timeout(30)

RECORDER = "tests.sample_actors.Recorder"
SUPERVISOR = "actors.supervisor.Supervisor"


def child(tree: TreeStatus | ChildStatus, name: str) -> Optional[ChildStatus]:
    return next((c for c in tree.children if c.name == name), None)


def running_anew(system: RunningSystem, name: str, old_pid: int,
                 under: Optional[str] = None) -> Optional[ChildStatus]:
    tree = system.status()
    node = child(child(tree, under) if under else tree, name)
    return node if node.state == "running" and node.pid not in (None, old_pid) else None


# -- a granted StopMe does not outlive the worker that asked for it --------------------------


def test_a_pool_worker_restarted_after_asking_to_stop_gets_work_again(
        actor_system: RunningSystem, context: ActorSystem, tmp_path: Path) -> None:
    system = actor_system
    root = system.start(ChildSpec("root", SUPERVISOR, SupervisorArgs((
        ChildSpec("pool", "actors.pool.Pool", PoolArgs(
            RECORDER, 2, Journal(str(tmp_path / "journal")))),))))
    pool = system.ok(root, WhereIs("pool")).address
    old = child(child(system.status(), "pool"), "worker-0").pid

    # worker-0 (fresh workers, ties in order) asks to stop; it is permanent: restarted
    assert system.ok(pool, "stop") == "stopping"
    fresh = wait_for(lambda: running_anew(system, "worker-0", old, under="pool"), 5,
                     what="worker-0 restarted after its StopMe")
    other = child(child(system.status(), "pool"), "worker-1").pid

    replies = collect(context, send_all(context, pool, (Request("pid") for _ in range(6))), 5)
    assert all(r.ok for r in replies.values()), [r.error for r in replies.values()]
    served = sorted(r.payload for r in replies.values())
    assert set(served) == {fresh.pid, other}, (
        f"the restarted worker {fresh.pid} got no work: {served}")
    assert not alive(old)


def test_a_single_worker_pool_serves_again_after_its_worker_asked_to_stop(
        actor_system: RunningSystem, tmp_path: Path) -> None:
    system = actor_system
    root = system.start(ChildSpec("root", SUPERVISOR, SupervisorArgs((
        ChildSpec("pool", "actors.pool.Pool", PoolArgs(
            RECORDER, 1, Journal(str(tmp_path / "journal")))),))))
    pool = system.ok(root, WhereIs("pool")).address
    old = system.ok(pool, "pid")
    assert system.ok(pool, "stop") == "stopping"
    fresh = wait_for(lambda: running_anew(system, "worker-0", old, under="pool"), 5,
                     what="worker-0 restarted after its StopMe")
    assert system.ok(pool, "pid") == fresh.pid  # not "unavailable: no worker is running"
