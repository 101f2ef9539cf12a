"""A real actor system per test (``multiprocTCPBase``), proof that it leaves no process
behind, and helpers to talk to it from a test's own mailbox.

The admin daemonizes into its own session (``setsid``) and every actor stays in it, so the
session id recorded at start names everything the test started; teardown shuts the system
down and fails the test if any process of that session is still alive.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.messages import Reply, Request, StatusQuery, TreeStatus, unpack
from actors.spec import ChildSpec
from actors.system import (
    SystemConfig,
    admin_pid,
    ask,
    logging_config,
    reap,
    session_processes,
    shutdown,
    start_root,
    start_system,
)
from memesys.testing.ports import free_port
from tests.support.timing import scaled

STOP_TIMEOUT_S = 5.0


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited actor reparented to init may linger as one)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def send_all(ctx: ActorSystem, target: ActorAddress, requests: Iterable[Request]) -> list[Request]:
    """Send without waiting, from a context of its own: ``ask`` on another context would
    swallow these replies as stale."""
    sent = list(requests)
    for request in sent:
        ctx.tell(target, request)
    return sent


def collect(
    ctx: ActorSystem,
    requests: list[Request],
    timeout: float,
    arrivals: dict[str, float] | None = None,
) -> dict[str, Reply]:
    """Every reply to ``requests`` by correlation id (arrival times into ``arrivals``); replies
    may come several to a :class:`~actors.messages.Batch`."""
    arrivals = {} if arrivals is None else arrivals
    wanted = {r.correlation_id for r in requests}
    replies: dict[str, Reply] = {}
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while wanted - replies.keys():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(
                f"{len(wanted - replies.keys())} of {len(wanted)} requests never "
                f"answered within {limit:g} s"
            )
        message = ctx.listen(remaining)
        for reply in unpack(message):
            if isinstance(reply, Reply) and reply.correlation_id in wanted:
                assert reply.correlation_id not in replies, "answered twice"
                replies[reply.correlation_id] = reply
                arrivals[reply.correlation_id] = time.monotonic()
    return replies


@dataclass
class RunningSystem:
    """A started actor system; ``root`` is stopped in order at teardown unless set to None."""

    asys: ActorSystem
    port: int
    sid: int
    root: ActorAddress | None = None
    stopped: bool = False
    killed_at_shutdown: list[int] = field(default_factory=list)

    def start(self, spec: ChildSpec, timeout: float = 10.0) -> ActorAddress:
        self.root = start_root(self.asys, spec, self.port, timeout)
        return self.root

    def ask(self, target: ActorAddress, payload: Any, timeout: float = 5.0) -> Reply:
        return ask(self.asys, target, payload, timeout)

    def ok(self, target: ActorAddress, payload: Any, timeout: float = 5.0) -> Any:
        """The payload of a successful reply (fails the test on an error reply)."""
        reply = self.ask(target, payload, timeout)
        assert reply.ok, f"{payload!r} failed: {reply.error}"
        return reply.payload

    def status(self, target: ActorAddress | None = None) -> TreeStatus:
        return self.ok(target or self.root, StatusQuery())

    def shutdown(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Ordered stop of the root (if any) and of the system; processes that had to be killed."""
        killed = shutdown(self.asys, self.port, self.root, timeout)
        self.stopped = True
        self.killed_at_shutdown.append(killed)
        return killed


@pytest.fixture
def actor_system() -> Iterator[RunningSystem]:
    port = free_port()
    asys = start_system(SystemConfig(port, log_defs=logging_config("WARNING")))
    pid = admin_pid(port)
    assert pid is not None, "the admin does not listen on its port"
    system = RunningSystem(asys, port, os.getsid(pid))
    try:
        yield system
    finally:
        if not system.stopped:
            system.shutdown()
        left = session_processes(system.sid)
        described = [(p.pid, p.status()) for p in left]
        reap(system.sid)
        assert not described, f"processes left after shutdown: {described}"
        assert system.killed_at_shutdown == [0], (
            f"shutdown had to kill {system.killed_at_shutdown} leftover processes"
        )


@pytest.fixture
def context(actor_system: RunningSystem) -> Iterator[ActorSystem]:
    """A private context of the test's system: its own mailbox for tell/listen."""
    with actor_system.asys.private() as ctx:
        yield ctx
