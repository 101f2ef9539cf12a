"""Shutdown budgets: a supervisor or pool gets as long to stop as its children need one after
another (derived from their specs, and reported at run time when they changed), so slow but
healthy workers are not SIGKILLed mid-drain.

Workers are :class:`tests.support.sample_actors.Recorder` actors that take ``stop_delay_s``
to handle ``Stop`` (a drain) and write ``stop NAME`` to the journal once they exit
gracefully; a worker that is killed writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors.messages import Ack, Resize, WhereIs
from actors.spec import (
    DEFAULT_SHUTDOWN_S,
    SUPERVISOR_STOP_MARGIN_S,
    ChildSpec,
    PoolArgs,
    SupervisorArgs,
    shutdown_budget,
)
from tests.support.actor_system import RunningSystem
from tests.support.sample_actors import Journal

pytestmark = pytest.mark.timeout(30)

RECORDER = "tests.support.sample_actors.Recorder"
SUPERVISOR = "actors.supervisor.Supervisor"
POOL = "actors.pool.Pool"
MARGIN = SUPERVISOR_STOP_MARGIN_S


def stops(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("stop")]


def test_budgets_are_derived_from_the_children() -> None:
    worker = ChildSpec("w", RECORDER, shutdown_s=3.0)
    pool = ChildSpec("p", POOL, PoolArgs(RECORDER, 4, worker_shutdown_s=3.0), shutdown_s=6.0)
    sub = ChildSpec("s", SUPERVISOR, SupervisorArgs((worker, ChildSpec("x", RECORDER))))
    root = ChildSpec("r", SUPERVISOR, SupervisorArgs((pool, sub)))
    assert shutdown_budget(worker) == 3.0
    assert shutdown_budget(ChildSpec("x", RECORDER)) == DEFAULT_SHUTDOWN_S
    assert shutdown_budget(pool) == 4 * 3.0 + MARGIN  # the explicit 6.0 is only a floor
    assert shutdown_budget(sub) == 3.0 + DEFAULT_SHUTDOWN_S + MARGIN
    assert shutdown_budget(root) == shutdown_budget(pool) + shutdown_budget(sub) + MARGIN
    long = ChildSpec("p", POOL, PoolArgs(RECORDER, 1, worker_shutdown_s=1.0), shutdown_s=60.0)
    assert shutdown_budget(long) == 60.0


def test_a_pool_of_slow_draining_workers_stops_in_full(
    actor_system: RunningSystem, tmp_path: Path
) -> None:
    """Four workers that each take 0.5 s of their 0.8 s to stop: 2 s in all, more than the
    2 x 0.8 s the pool's spec names (the daemon's old constant)."""
    system = actor_system
    path = tmp_path / "journal"
    workers = Journal(str(path), stop_delay_s=0.5)
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec(
                        "pool",
                        POOL,
                        PoolArgs(RECORDER, 4, workers, worker_shutdown_s=0.8),
                        shutdown_s=2 * 0.8,
                    ),
                )
            ),
        )
    )
    started = time.monotonic()
    assert system.shutdown() == 0
    elapsed = time.monotonic() - started
    assert stops(path) == ["stop worker-3", "stop worker-2", "stop worker-1", "stop worker-0"]
    assert elapsed >= 4 * 0.5


def test_a_pool_grown_at_run_time_reports_its_longer_stop_up_the_tree(
    actor_system: RunningSystem, tmp_path: Path
) -> None:
    """root > sub > pool: the specs say one worker (sub's derived budget 2.5 s, more than
    the 2 s its spec names); resized to eight workers that take 0.4 s each, the pool needs
    3.2 s. Its Stopping report reaches sub, and sub's reaches the root."""
    system = actor_system
    path = tmp_path / "journal"
    workers = Journal(str(path), stop_delay_s=0.4)
    pool = ChildSpec(
        "pool", POOL, PoolArgs(RECORDER, 1, workers, worker_shutdown_s=0.5), shutdown_s=1.0
    )
    sub = ChildSpec("sub", SUPERVISOR, SupervisorArgs((pool,)), shutdown_s=2.0)
    assert shutdown_budget(sub) == 0.5 + 2 * MARGIN
    root = system.start(ChildSpec("root", SUPERVISOR, SupervisorArgs((sub,))))
    assert system.ok(system.ok(root, WhereIs("sub/pool")).address, Resize(8)) == Ack("8 workers")
    started = time.monotonic()
    assert system.shutdown() == 0
    elapsed = time.monotonic() - started
    assert stops(path) == [f"stop worker-{i}" for i in reversed(range(8))]
    assert elapsed >= 8 * 0.4
