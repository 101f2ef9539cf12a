"""Monitor: a supervisor answers a standing Monitor with Down when it exits, saying whether
its exit was requested (an ordered stop) or why it gave up (OTP's monitor and exit reason)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from actors.messages import Down, Monitor, Ping, Reply, Request, StatusQuery, unpack
from actors.spec import ChildSpec, SupervisorArgs
from actors.system import stop_tree
from tests.support.actor_system import RunningSystem, alive
from tests.support.sample_actors import Journal
from tests.support.timing import wait_for

pytestmark = pytest.mark.timeout(30)
SUPERVISOR = "actors.supervisor.Supervisor"


def watch(context, root) -> Request:
    monitor = Request(Monitor(), "monitor-1")
    context.tell(root, monitor)
    return monitor


def down_of(context, monitor: Request, timeout: float) -> Down:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in unpack(context.listen(deadline - time.monotonic())):
            if isinstance(message, Reply) and message.correlation_id == monitor.correlation_id:
                assert isinstance(message.payload, Down)
                return message.payload
    pytest.fail("no Down within the timeout")


def start(system: RunningSystem, tmp_path: Path, max_restarts: int) -> int:
    journal = Journal(str(tmp_path / "journal"))
    root = system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (ChildSpec("a", "tests.support.sample_actors.Recorder", journal),),
                max_restarts=max_restarts,
                period_s=5,
            ),
        )
    )
    return system.ok(root, Ping()).pid


def test_an_ordered_stop_answers_down_requested(
    actor_system: RunningSystem, context, tmp_path: Path
) -> None:
    start(actor_system, tmp_path, max_restarts=3)
    monitor = watch(context, actor_system.root)
    actor_system.ok(actor_system.root, StatusQuery())  # the monitor is in before the stop
    assert stop_tree(actor_system.asys, actor_system.root, 10)
    down = down_of(context, monitor, 5)
    assert (down.name, down.requested) == ("root", True)
    actor_system.root = None


def test_giving_up_answers_down_with_the_reason(
    actor_system: RunningSystem, context, tmp_path: Path
) -> None:
    root_pid = start(actor_system, tmp_path, max_restarts=0)
    monitor = watch(context, actor_system.root)
    child = actor_system.status().children[0].pid
    os.kill(child, signal.SIGKILL)  # one restart is one too many
    down = down_of(context, monitor, 5)
    assert down.name == "root" and not down.requested
    assert "intensity" in down.reason
    wait_for(lambda: not alive(root_pid), 5, what="the root to exit")
    actor_system.root = None
