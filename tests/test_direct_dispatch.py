"""A directory sends a pool's requests to its workers itself, on real processes and SIGKILLs.

The pool pushes its list of workers (:class:`Members`) to subscribers; the directory picks the
least loaded worker by its own counts. The pool's guarantees must hold on this path too: a
worker's exit answers its requests ``worker_lost`` or retries the idempotent ones, past
``max_outstanding`` ``overloaded``, and while every worker restarts requests wait for one.

Workers are :class:`tests.support.sample_actors.Sleeper` async actors (a request ``seconds`` sleeps
that long without blocking the worker and answers its pid) unless said otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.bridge import Bridge, Directory, RemoteFailure
from actors.messages import (
    Members,
    Request,
    Resize,
    StatusQuery,
    Subscribe,
    WhereIs,
    unpack,
)
from actors.spec import Backoff, ChildSpec, PoolArgs, SupervisorArgs
from tests.support.actor_system import RunningSystem, alive
from tests.support.sample_actors import Journal
from tests.support.timing import scaled, wait_for_async

pytestmark = pytest.mark.timeout(30)

SLEEPER = "tests.support.sample_actors.Sleeper"


def start_pool(
    system: RunningSystem, size: int, worker: str = SLEEPER, worker_args=None, **kwargs
) -> ActorAddress:
    pool = ChildSpec("pool", "actors.pool.Pool", PoolArgs(worker, size, worker_args, **kwargs))
    root = system.start(ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs((pool,))))
    return system.ok(root, WhereIs("pool")).address


@pytest.fixture
async def bridge(actor_system: RunningSystem) -> AsyncIterator[Bridge]:
    bridge = Bridge(actor_system.asys)
    await bridge.start()
    yield bridge
    await bridge.close()


async def workers(bridge: Bridge, root: ActorAddress) -> dict:
    """The pool's workers by name, as the root's status tree shows them."""
    tree = await bridge.ask(root, StatusQuery(), 5)
    return {w.name: w for w in next(c for c in tree.children if c.name == "pool").children}


async def in_flight(bridge: Bridge, root: ActorAddress, n: int) -> None:
    """Wait until the pool's workers hold ``n`` requests in all (the status tree's count)."""

    async def held() -> bool:
        return sum(w.in_flight or 0 for w in (await workers(bridge, root)).values()) >= n

    await wait_for_async(held, 5, f"{n} requests in flight", interval=0.02)


async def test_requests_go_straight_to_the_least_loaded_workers(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    start_pool(actor_system, 3)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)  # resolves the path and subscribes
    started = time.monotonic()
    calls = [asyncio.ensure_future(directory.ask("pool", 0.3, 5)) for _ in range(30)]
    await in_flight(bridge, actor_system.root, 30)
    now = await workers(bridge, actor_system.root)
    # Each worker reports the requests it holds itself (the admin's IN FLIGHT column): the
    # directory spread the 30 evenly without the pool's books.
    assert [w.in_flight for w in now.values()] == [10, 10, 10]
    pids = Counter(await asyncio.gather(*calls))
    assert pids == {w.pid: 10 for w in now.values()}
    # 30 calls of 0.3 s on 3 workers: about 1 s when spread evenly; 1.5 s, scaled.
    assert time.monotonic() - started < scaled(1.5)


async def test_a_killed_worker_answers_its_requests_worker_lost_or_retries_them(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    start_pool(actor_system, 3)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    before = await workers(bridge, actor_system.root)
    finished: dict[int, float] = {}
    calls = []
    for i in range(6):  # ties go in order: request i to worker-(i % 3)
        call = asyncio.ensure_future(directory.ask("pool", 1.5, 5, idempotent=i in (0, 4, 5)))
        call.add_done_callback(lambda _, i=i: finished.setdefault(i, time.monotonic()))
        calls.append(call)
    await in_flight(bridge, actor_system.root, 6)
    victim = before["worker-0"].pid
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    lost = outcomes[3]  # not idempotent: answered at once, not when the call would have ended
    assert isinstance(lost, RemoteFailure) and lost.failure.code == "worker_lost", lost
    assert finished[3] - killed < 1.0
    assert [outcomes[i] for i in (1, 2, 4, 5)] == [
        before[f"worker-{i % 3}"].pid for i in (1, 2, 4, 5)
    ]

    async def replaced() -> dict:
        now = await workers(bridge, actor_system.root)
        return now if now["worker-0"].state == "running" and now["worker-0"].pid != victim else {}

    now = await wait_for_async(replaced, 5, "the pool to restart worker-0")
    assert not alive(victim)
    # retried by a live worker: another one, or worker-0's replacement if it was up already
    assert outcomes[0] in {w.pid for w in now.values()}
    # The pool's notice to the directory travels apart from the status the test can read:
    # no event to wait for; 0.1 s for it to arrive.
    await asyncio.sleep(0.1)
    # the pool told the directory where the new worker-0 is: all three take work again
    pids = await asyncio.gather(*(directory.ask("pool", 0.2, 5) for _ in range(3)))
    assert set(pids) == {w.pid for w in now.values()}
    assert bridge.stale_replies == 0


def workers_now(system: RunningSystem):
    """The pool's workers, as the root's status tree shows them (blocking)."""
    return next(c for c in system.status().children if c.name == "pool").children


def test_the_pool_pushes_its_workers_to_subscribers(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    pool = start_pool(system, 2)
    seen: list[Members] = []

    def members_until(predicate: Callable[[Members], bool], timeout: float = 5) -> Members:
        """Read pushed lists (newer each time) until one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such list of workers; seen {seen[-3:]}"
            for message in unpack(context.listen(remaining)):
                payload = getattr(message, "payload", message)
                if isinstance(payload, Members):
                    assert not seen or payload.version > seen[-1].version
                    seen.append(payload)
                    if predicate(payload):
                        return payload

    def named(members: Members) -> dict:
        return {m.name: m for m in members.workers}

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with system.asys.private() as gone:  # a subscriber whose process has died
        gone.tell(pool, Request(Subscribe(dead.pid)))
        assert isinstance(gone.listen(5).payload, Members)
        context.tell(pool, Request(Subscribe(os.getpid())))
        first = members_until(lambda m: True)
        assert sorted(named(first)) == ["worker-0", "worker-1"]
        assert all(m.accepting for m in first.workers) and first.max_outstanding == 64

        victim = workers_now(system)[1]
        os.kill(victim.pid, signal.SIGKILL)
        members_until(lambda m: "worker-1" not in named(m))
        back = members_until(lambda m: "worker-1" in named(m))
        assert back.workers[1].address != first.workers[1].address  # its new address
        assert back.workers[0].address == first.workers[0].address

        assert system.ok(pool, Resize(3))
        grown = members_until(lambda m: len(m.workers) == 3)
        assert all(m.accepting for m in grown.workers)
        assert system.ok(pool, Resize(1))
        members_until(lambda m: [w.accepting for w in m.workers] == [True, False, False])
        shrunk = members_until(lambda m: len(m.workers) == 1)
        assert shrunk.workers[0].address == first.workers[0].address
        assert gone.listen(0.2) is None  # the dead subscriber was forgotten


def test_an_exited_worker_is_listed_until_its_last_replies_are_out(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    """A crashing worker answers ``crashed``, then exits; the pool learns of the exit before
    the process has sent that answer. Listing the worker (taking no work) until its process
    is gone keeps the answer ahead of the list that says the worker's requests are lost."""
    pool = start_pool(
        actor_system, 1, "tests.support.sample_actors.Recorder", Journal(str(tmp_path / "j"))
    )
    for _ in range(5):
        context.tell(pool, Request(Subscribe(os.getpid())))
        worker = None
        while worker is None:  # the answer, or a list pushed after the last restart
            for message in unpack(context.listen(5)):
                members = getattr(message, "payload", message)
                if isinstance(members, Members):
                    worker = next((m for m in members.workers if m.accepting), None)
        crash = Request("crash")
        context.tell(worker.address, crash)
        order = []
        while "lost" not in order:
            for message in unpack(context.listen(5)):
                if getattr(message, "correlation_id", None) == crash.correlation_id:
                    assert message.error.code == "crashed"
                    order.append("crashed")
                elif isinstance(message, Members) and all(
                    m.address != worker.address for m in message.workers
                ):
                    assert not alive(worker.pid)  # listed until its process was gone
                    order.append("lost")
        assert order == ["crashed", "lost"]


async def test_while_every_worker_restarts_requests_wait_for_one(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    start_pool(actor_system, 1, backoff=Backoff(initial_s=0.4, max_s=1.0, jitter=0.0))
    directory = Directory(bridge, actor_system.root)
    victim = await directory.ask("pool", 0.0, 5)
    os.kill(victim, signal.SIGKILL)

    async def restarting() -> bool:
        return (await workers(bridge, actor_system.root))["worker-0"].state != "running"

    await wait_for_async(restarting, 2, "the pool to see its worker die")
    started = time.monotonic()
    # idempotent: had the directory not heard of the death yet, the request, sent to the
    # dead worker, would be answered worker_lost (as through the pool) and retried
    pid = await directory.ask("pool", 0.0, 5, idempotent=True)
    assert pid != victim and alive(pid)
    assert time.monotonic() - started > 0.2  # it waited for the restart


async def test_past_max_outstanding_on_every_worker_requests_are_refused(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    start_pool(actor_system, 2, max_outstanding=2)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    busy = [asyncio.ensure_future(directory.ask("pool", 1.0, 5)) for _ in range(4)]
    await in_flight(bridge, actor_system.root, 4)
    started = time.monotonic()
    with pytest.raises(RemoteFailure) as refused:
        await directory.ask("pool", 0.0, 5)
    assert refused.value.failure.code == "overloaded"
    # Refused at once (milliseconds), not queued behind the busy worker; 0.2 s, scaled.
    assert time.monotonic() - started < scaled(0.2)
    assert len(set(await asyncio.gather(*busy))) == 2
    assert await directory.ask("pool", 0.0, 5)  # capacity is back


async def test_a_crash_answers_crashed_and_the_restarted_worker_takes_work(
    actor_system: RunningSystem, bridge: Bridge, tmp_path
) -> None:
    start_pool(
        actor_system, 1, "tests.support.sample_actors.Recorder", Journal(str(tmp_path / "j"))
    )
    directory = Directory(bridge, actor_system.root)
    victim = await directory.ask("pool", "pid", 5)
    with pytest.raises(RemoteFailure) as crashed:
        await directory.ask("pool", "crash", 5)
    assert crashed.value.failure.code == "crashed"

    async def restarted() -> bool:
        worker = (await workers(bridge, actor_system.root))["worker-0"]
        return worker.state == "running" and worker.pid != victim

    await wait_for_async(restarted, 5, "the worker's restart")
    await asyncio.sleep(0.1)  # the pool's notice to the directory, as above
    assert await directory.ask("pool", "pid", 5) not in (victim, None)


async def test_a_killed_pool_is_found_again_and_its_requests_are_lost(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    start_pool(actor_system, 2)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    tree = await bridge.ask(actor_system.root, StatusQuery(), 5)
    old = next(c for c in tree.children if c.name == "pool")
    held = asyncio.ensure_future(directory.ask("pool", 3.0, 10))
    await in_flight(bridge, actor_system.root, 1)
    os.kill(old.pid, signal.SIGKILL)  # its workers die with it

    async def pool_back() -> bool:
        tree = await bridge.ask(actor_system.root, StatusQuery(), 5)
        pool = next(c for c in tree.children if c.name == "pool")
        return (
            pool.state == "running"
            and pool.pid != old.pid
            and all(w.state == "running" for w in pool.children)
            and len(pool.children) == 2
        )

    await wait_for_async(pool_back, 10, "the root to restart the pool")
    started = time.monotonic()
    pid = await directory.ask("pool", 0.0, 5)  # finds the dead workers, then the new pool
    assert pid not in {w.pid for w in old.children} and alive(pid)
    # One ask to the dead workers and one to the new pool: tens of ms; 1 s, scaled.
    assert time.monotonic() - started < scaled(1.0)
    assert held.done()  # its workers died with their pool: answered, not left to time out
    assert held.exception().failure.code == "worker_lost"
