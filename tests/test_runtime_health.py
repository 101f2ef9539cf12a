"""Health checks, overdue dispatch, deadlines and lost requests, on real processes with real
SIGSTOPs and SIGKILLs.

A frozen process keeps its pid and its socket: neither the pid check nor ``ChildActorExited``
notices it; only an answer within a deadline does. So every supervisor pings its children and
kills (process tree, SIGKILL) and restarts one that stays silent for ``health_timeout_s``.
Dispatch passes over a worker whose oldest request is overdue; a request carries its deadline
and is dropped (never worked on) once it has passed; and whatever a directory had in flight on
an actor that is gone is answered at once, not at its timeout.

Every test that stops a process resumes or kills it in teardown (the ``frozen`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.async_actor import AsyncActor
from actors.base import BaseActor, RequestFailed
from actors.bridge import Bridge, Directory, RemoteFailure
from actors.dispatch import pick
from actors.messages import ChildStatus, Request, StatusQuery, TreeStatus, WhereIs
from actors.spec import ChildSpec, PoolArgs, SupervisorArgs
from actors.supervisor import BUSY_GRACE
from tests.support.actor_system import RunningSystem, alive, collect, send_all
from tests.support.sample_actors import Journal
from tests.support.timing import scaled, wait_for, wait_for_async

pytestmark = pytest.mark.timeout(30)

RECORDER = "tests.support.sample_actors.Recorder"
SLEEPER = "tests.support.sample_actors.Sleeper"
SUPERVISOR = "actors.supervisor.Supervisor"
POOL = "actors.pool.Pool"
RELAY = f"{__name__}.Relay"
SPINNER = f"{__name__}.Spinner"

INTERVAL_S = 0.2  # health checks of these tests: a ping every 0.2 s, killed after 1 s silent
TIMEOUT_S = 1.0
HEALTH = {"health_interval_s": INTERVAL_S, "health_timeout_s": TIMEOUT_S}
# Every bound on a replacement is the configured health timeout (the scenario) plus this
# allowance (scaled) for the kill to be noticed and the child to start again.
RESTART_S = scaled(0.5)


class Relay(AsyncActor):
    """Asks another actor by path from inside its own request: ``(path, payload, timeout)``;
    answers the other's answer. Its sub-ask is bounded by the deadline of what it serves."""

    async def _relay(self, path: str, payload: Any, timeout: float) -> Any:
        try:
            return await self.ask(path, payload, timeout)
        except RemoteFailure as exc:
            raise RequestFailed(exc.failure.code, exc.failure.message) from exc

    def handle(self, payload: Any) -> Any:
        return self._relay(*payload)


class Spinner(BaseActor):
    """Busy on the CPU for ``payload`` seconds in one handler; answers its pid."""

    def handle(self, payload: Any) -> Any:
        end = time.monotonic() + payload
        while time.monotonic() < end:
            pass
        return os.getpid()


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """Pids a test SIGSTOPs; each is resumed at teardown if it still lives (so that nothing
    stays stopped, whatever the test's outcome)."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def freeze(frozen: list[int], pid: int) -> float:
    frozen.append(pid)
    os.kill(pid, signal.SIGSTOP)
    return time.monotonic()


def node(tree: TreeStatus | ChildStatus, *names: str) -> ChildStatus | None:
    for name in names:
        tree = next((c for c in tree.children if c.name == name), None)
        if tree is None:
            return None
    return tree


def replaced(system: RunningSystem, old_pid: int, *names: str) -> ChildStatus | None:
    """The child at ``names`` once it runs again under another pid (else None)."""
    found = node(system.status(), *names)
    return (
        found if found and found.state == "running" and found.pid not in (None, old_pid) else None
    )


def dead(pid: int) -> bool:
    return not alive(pid)


@pytest.fixture
async def bridge(actor_system: RunningSystem) -> AsyncIterator[Bridge]:
    bridge = Bridge(actor_system.asys)
    await bridge.start()
    yield bridge
    await bridge.close()


def start_pool(
    system: RunningSystem, size: int, worker: str = SLEEPER, worker_args: Any = None, **kwargs: Any
) -> ActorAddress:
    pool = ChildSpec("pool", POOL, PoolArgs(worker, size, worker_args, **kwargs))
    root = system.start(ChildSpec("root", SUPERVISOR, SupervisorArgs((pool,), **HEALTH)))
    return system.ok(root, WhereIs("pool")).address


async def pool_holds(bridge: Bridge, root: ActorAddress, n: int) -> None:
    """Wait until the pool's workers hold ``n`` requests in all (the status tree's count)."""

    async def held() -> bool:
        pool = node(await bridge.ask(root, StatusQuery(), 5), "pool")
        return pool is not None and sum(w.in_flight or 0 for w in pool.children) >= n

    await wait_for_async(held, 5, f"{n} requests in flight", interval=0.02)


# -- 1. health checks: a frozen child is killed and restarted ---------------------------------


def test_a_stopped_child_is_killed_and_restarted_within_the_health_timeout(
    actor_system: RunningSystem, frozen: list[int], tmp_path
) -> None:
    system = actor_system
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec("a", RECORDER, Journal(str(tmp_path / "j"))),
                    ChildSpec("b", RECORDER, Journal(str(tmp_path / "j"))),
                ),
                **HEALTH,
            ),
        )
    )
    before = system.status()
    victim, other = node(before, "a").pid, node(before, "b").pid
    stopped_at = freeze(frozen, victim)
    back = wait_for(
        lambda: replaced(system, victim, "a"),
        TIMEOUT_S + RESTART_S + 1,
        interval=0.02,
        what="the frozen child to be replaced",
    )
    took = time.monotonic() - stopped_at
    assert took < TIMEOUT_S + RESTART_S, f"restarted {took:.2f} s after SIGSTOP"
    assert dead(victim)  # killed, not left frozen
    after = system.status()
    assert (back.restarts, node(after, "b").pid, node(after, "b").restarts) == (1, other, 0)
    # counted as the health check's kill, and said so (/metrics and /readyz read these)
    assert (back.health_kills, node(after, "b").health_kills) == (1, 0)
    assert back.last_exit.startswith("killed by its health check: silent for"), back
    assert back.escalations == 0
    # the replacement works (a frozen child is restarted like a crashed one, fresh state)
    located = system.ok(system.root, WhereIs("a"))
    assert system.ok(located.address, "count") == 1


def test_a_stopped_supervisor_is_killed_with_its_children_and_restarted(
    actor_system: RunningSystem, frozen: list[int], tmp_path
) -> None:
    system = actor_system
    journal = Journal(str(tmp_path / "j"))
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec(
                        "sub",
                        SUPERVISOR,
                        SupervisorArgs((ChildSpec("leaf", RECORDER, journal),), **HEALTH),
                    ),
                ),
                **HEALTH,
            ),
        )
    )
    before = system.status()
    sub, leaf = node(before, "sub").pid, node(before, "sub", "leaf").pid
    stopped_at = freeze(frozen, sub)
    wait_for(
        lambda: replaced(system, sub, "sub"),
        TIMEOUT_S + RESTART_S + 1,
        interval=0.02,
        what="the frozen supervisor to be replaced",
    )
    assert time.monotonic() - stopped_at < TIMEOUT_S + RESTART_S
    assert dead(sub) and dead(leaf)  # its process tree went with it: no orphan left running
    assert node(system.status(), "sub", "leaf").state == "running"


def test_a_stopped_pool_worker_is_replaced_and_its_requests_answered(
    actor_system: RunningSystem, context: ActorSystem, frozen: list[int]
) -> None:
    """Through the pool: what the frozen worker held is answered ``worker_lost`` when it is
    killed (or retried elsewhere if idempotent), within the health timeout, not at the
    requests' own timeouts."""
    system = actor_system
    pool = start_pool(system, 2, **HEALTH)
    victim = node(system.status(), "pool", "worker-0").pid
    stopped_at = freeze(frozen, victim)
    # fresh workers, ties in order: the first goes to worker-0, the second to worker-1...
    requests = send_all(
        context, pool, [Request(0.0, idempotent=False), Request(0.0), Request(0.0, idempotent=True)]
    )
    arrivals: dict[str, float] = {}
    replies = collect(context, requests, TIMEOUT_S + RESTART_S + 2, arrivals)
    lost, served, retried = (replies[r.correlation_id] for r in requests)
    assert lost.error is not None and lost.error.code == "worker_lost"
    assert served.ok and retried.ok and retried.payload != victim
    assert max(arrivals.values()) - stopped_at < TIMEOUT_S + RESTART_S
    wait_for(lambda: dead(victim), 0.5, what="the frozen worker's end")
    wait_for(lambda: replaced(system, victim, "pool", "worker-0"), 2, what="worker-0 back")


def test_health_kills_count_toward_restart_intensity(
    actor_system: RunningSystem, frozen: list[int], tmp_path
) -> None:
    """A frozen child's kill is a crash: two of them in the period exceed ``max_restarts=1``
    and the supervisor gives up, escalating to its parent (which restarts it)."""
    system = actor_system
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
                            (ChildSpec("leaf", RECORDER, Journal(str(tmp_path / "j"))),),
                            max_restarts=1,
                            period_s=30,
                            **HEALTH,
                        ),
                    ),
                ),
                **HEALTH,
            ),
        )
    )
    sub = node(system.status(), "sub").pid
    leaf = node(system.status(), "sub", "leaf").pid
    freeze(frozen, leaf)
    leaf = wait_for(
        lambda: replaced(system, leaf, "sub", "leaf"),
        TIMEOUT_S + RESTART_S + 1,
        what="the first frozen leaf replaced",
    ).pid
    assert node(system.status(), "sub").pid == sub  # one restart: within the intensity
    freeze(frozen, leaf)
    back = wait_for(
        lambda: replaced(system, sub, "sub"),
        TIMEOUT_S + RESTART_S + 3,
        what="the sub-supervisor restarted",
    )
    assert back.restarts == 1 and dead(leaf)
    assert back.escalations == 1 and back.health_kills == 0, back
    assert back.last_exit.startswith("escalated: restart intensity reached"), back


def test_busy_workers_are_not_killed(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    """A synchronous worker answers pings between requests: kept busy with short handlers
    (20 ms, a few queued) for three health timeouts, it is never killed; nor is one whose
    queue holds twice the health timeout of work (its ping waits behind it, but each message
    it takes up is a heartbeat). An async worker answers pings from its actor thread while
    its work runs: calls longer than the timeout do not make it look dead."""
    system = actor_system
    journal = Journal(str(tmp_path / "j"))
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec("sync", POOL, PoolArgs(RECORDER, 2, journal, **HEALTH)),
                    ChildSpec("async", SLEEPER, 8),
                ),
                **HEALTH,
            ),
        )
    )
    sync = system.ok(system.root, WhereIs("sync")).address
    sleeper = system.ok(system.root, WhereIs("async")).address
    before = system.status()
    with system.asys.private() as other:  # collect drops the replies it does not wait for
        long_calls = send_all(other, sleeper, [Request(3 * TIMEOUT_S) for _ in range(4)])
        end = time.monotonic() + 3 * TIMEOUT_S
        while time.monotonic() < end:
            replies = collect(
                context, send_all(context, sync, [Request(("sleep", 0.02)) for _ in range(4)]), 5
            )
            assert all(r.ok for r in replies.values())
        assert all(r.ok for r in collect(other, long_calls, 5).values())
    worker = node(before, "sync", "worker-0")
    address = system.ok(system.root, WhereIs("sync/worker-0")).address
    queued = send_all(
        context, address, [Request(("sleep", 0.05)) for _ in range(int(2 * TIMEOUT_S / 0.05))]
    )
    assert all(r.ok for r in collect(context, queued, 10).values())
    assert node(system.status(), "sync", "worker-0").pid == worker.pid
    after = system.status()
    assert [w.pid for w in node(after, "sync").children] == [
        w.pid for w in node(before, "sync").children
    ]
    assert node(after, "async").pid == node(before, "async").pid
    assert all(c.restarts == 0 for c in after.children + node(after, "sync").children)


def test_a_handler_longer_than_the_health_timeout_is_taken_for_hung(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    """What a synchronous worker cannot do: answer while one handler runs. One that runs past
    the health timeout looks exactly like a hung worker, and is killed as one; the pool
    answers its request ``worker_lost`` then."""
    system = actor_system
    pool = start_pool(system, 1, RECORDER, Journal(str(tmp_path / "j")), **HEALTH)
    victim = node(system.status(), "pool", "worker-0").pid
    started = time.monotonic()
    request = Request(("sleep", 5 * TIMEOUT_S))
    reply = collect(context, send_all(context, pool, [request]), 5)[request.correlation_id]
    assert reply.error is not None and reply.error.code == "worker_lost"
    assert time.monotonic() - started < TIMEOUT_S + RESTART_S
    wait_for(lambda: replaced(system, victim, "pool", "worker-0"), 2, what="worker-0 back")


def test_a_busy_handler_gets_a_longer_leash_than_a_hung_one(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    """Silent but visibly working (its process's CPU time advances): a CPU-bound handler of
    twice the health timeout is let finish; one that stays silent for ``BUSY_GRACE`` timeouts
    is killed all the same."""
    system = actor_system
    pool = start_pool(system, 1, SPINNER, **HEALTH)
    pid = node(system.status(), "pool", "worker-0").pid
    assert system.ok(pool, 2 * TIMEOUT_S, timeout=5) == pid
    assert node(system.status(), "pool", "worker-0").restarts == 0
    started = time.monotonic()
    request = Request(10 * TIMEOUT_S)
    reply = collect(context, send_all(context, pool, [request]), 10)[request.correlation_id]
    assert reply.error is not None and reply.error.code == "worker_lost"
    took = time.monotonic() - started
    assert BUSY_GRACE * TIMEOUT_S - 0.5 < took < BUSY_GRACE * TIMEOUT_S + RESTART_S, took


def test_a_supervisor_that_was_itself_stopped_does_not_kill_its_children(
    actor_system: RunningSystem, frozen: list[int], tmp_path
) -> None:
    """A supervisor resumed after a freeze longer than the health timeout finds every child
    silent for that long: the silence was its own, so the children get a fresh timeout."""
    system = actor_system
    journal = Journal(str(tmp_path / "j"))
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec(
                        "sub",
                        SUPERVISOR,
                        SupervisorArgs((ChildSpec("leaf", RECORDER, journal),), **HEALTH),
                    ),
                ),
                health_interval_s=1.0,
                health_timeout_s=10.0,
            ),
        )
    )
    before = system.status()
    sub, leaf = node(before, "sub").pid, node(before, "sub", "leaf").pid
    freeze(frozen, sub)
    time.sleep(2 * TIMEOUT_S)  # the scenario: frozen past the leaf's own health timeout
    os.kill(sub, signal.SIGCONT)
    time.sleep(TIMEOUT_S)  # an absence: a wrong kill of the leaf would show by now
    after = node(system.status(), "sub")
    assert (after.pid, node(after, "leaf").pid, node(after, "leaf").restarts) == (sub, leaf, 0)


# -- 2. dispatch passes over an overdue worker ------------------------------------------------


def test_the_dispatch_rule() -> None:
    held = {"a": 0, "b": 2, "c": 1}
    since = {"a": None, "b": 10.0, "c": 5.0}  # monotonic time of each one's oldest request

    def choose(workers, now, overdue_s=3.0, max_outstanding=4):
        return pick(workers, held.get, since.get, max_outstanding, overdue_s, now)

    assert choose(["a", "b", "c"], now=6.0) == "a"  # least loaded
    assert choose(["b", "c"], now=6.0) == "c"
    assert choose(["b", "c"], now=9.0) == "b"  # c's oldest is 4 s old: overdue, passed over
    assert choose(["b", "c"], now=14.0) == "c"  # every one overdue: least loaded of all
    assert choose(["b", "c"], now=9.0, overdue_s=None) == "c"  # no bound: least loaded
    assert choose(["b", "c"], now=6.0, max_outstanding=1) is None  # all full: refuse
    assert choose(["b", "c"], now=9.0, max_outstanding=2) == "c"  # overdue, but the only one
    assert choose([], now=0.0) is None


async def test_the_directory_passes_over_an_overdue_worker(
    actor_system: RunningSystem, bridge: Bridge, frozen: list[int]
) -> None:
    # a long health timeout: the frozen worker stays frozen (not killed) during the test
    start_pool(actor_system, 2, health_interval_s=1.0, health_timeout_s=20.0, overdue_s=0.3)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    workers = node(actor_system.status(), "pool")
    frozen_pid, live_pid = (w.pid for w in workers.children)
    freeze(frozen, frozen_pid)
    stuck = asyncio.ensure_future(directory.ask("pool", 0.0, 10))  # ties: worker-0
    await asyncio.sleep(0.5)  # the scenario: its request is now overdue (overdue_s 0.3)
    started = time.monotonic()
    # least loaded alone would send every other of these to worker-0 (1 held each: a tie)
    served = await asyncio.gather(*(directory.ask("pool", 0.2, 5) for _ in range(6)))
    assert served == [live_pid] * 6
    # Six 0.2 s requests on the live worker at once: about 0.2 s, not behind the frozen
    # one; 1 s, scaled.
    assert time.monotonic() - started < scaled(1.0)
    os.kill(frozen_pid, signal.SIGCONT)
    assert await stuck == frozen_pid


def test_the_pool_passes_over_an_overdue_worker(
    actor_system: RunningSystem, context: ActorSystem, frozen: list[int]
) -> None:
    system = actor_system
    pool = start_pool(system, 2, health_interval_s=1.0, health_timeout_s=20.0, overdue_s=0.3)
    workers = node(system.status(), "pool")
    frozen_pid, live_pid = (w.pid for w in workers.children)
    freeze(frozen, frozen_pid)
    stuck = send_all(context, pool, [Request(0.0)])  # ties: worker-0
    time.sleep(0.5)  # the scenario: its request is now overdue (overdue_s 0.3)
    started = time.monotonic()
    replies = collect(context, send_all(context, pool, [Request(0.2) for _ in range(6)]), 5)
    assert [r.payload for r in replies.values()] == [live_pid] * 6
    # Six 0.2 s requests on the live worker at once: about 0.2 s, not behind the frozen
    # one; 1 s, scaled.
    assert time.monotonic() - started < scaled(1.0)
    os.kill(frozen_pid, signal.SIGCONT)
    assert collect(context, stuck, 5)[stuck[0].correlation_id].payload == frozen_pid


# -- 4. deadlines travel with requests ---------------------------------------------------------


def test_a_request_that_arrives_after_its_deadline_is_not_handled(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    system = actor_system
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs((ChildSpec("rec", RECORDER, Journal(str(tmp_path / "j"))),), **HEALTH),
        )
    )
    rec = system.ok(system.root, WhereIs("rec")).address
    late = Request("count", deadline=time.time() - 0.1)
    # queued behind a 0.5 s handler, its deadline passes while it waits
    busy, waits = Request(("sleep", 0.5)), Request("count", deadline=time.time() + 0.2)
    replies = collect(context, send_all(context, rec, [late, busy, waits]), 5)
    assert replies[late.correlation_id].error.code == "timeout"
    assert replies[busy.correlation_id].ok
    assert replies[waits.correlation_id].error.code == "timeout"
    assert system.ok(rec, "count") == 1  # neither dropped request was counted


def test_an_async_request_is_abandoned_at_its_deadline(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    system.start(
        ChildSpec("root", SUPERVISOR, SupervisorArgs((ChildSpec("sleeper", SLEEPER, 8),), **HEALTH))
    )
    sleeper = system.ok(system.root, WhereIs("sleeper")).address
    started = time.monotonic()
    request = Request(2.0, deadline=time.time() + 0.3)
    arrivals: dict[str, float] = {}
    reply = collect(context, send_all(context, sleeper, [request]), 5, arrivals)[
        request.correlation_id
    ]
    assert reply.error is not None and reply.error.code == "timeout"
    # Abandoned at its 0.3 s deadline (0.25: the deadline was set a moment before), not after
    # the 2 s sleep; 0.5 s (scaled) of margin.
    assert 0.25 < arrivals[request.correlation_id] - started < 0.3 + scaled(0.5)
    wait_for(
        lambda: node(system.status(), "sleeper").in_flight == 0,
        1,
        what="the abandoned coroutine to be gone",
    )


def test_sub_requests_are_bounded_by_the_deadline_of_the_request_served(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    """An async actor serving a request with 0.6 s left asks another actor with a 10 s
    timeout: its ask is cut to the deadline (less the margin for the answer), the request it
    sends carries that deadline, and the other actor, busy until after it, drops it: no work
    is done after the first asker was told it failed. (A long health timeout: the
    synchronous Recorder, busy in a 1 s handler, cannot answer pings meanwhile.)"""
    system = actor_system
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec("rec", RECORDER, Journal(str(tmp_path / "j"))),
                    ChildSpec("relay", RELAY),
                ),
                health_interval_s=1.0,
                health_timeout_s=10.0,
            ),
        )
    )
    rec = system.ok(system.root, WhereIs("rec")).address
    relay = system.ok(system.root, WhereIs("relay")).address
    assert system.ok(relay, ("rec", "count", 10.0)) == 1  # relaying works
    busy = send_all(context, rec, [Request(("sleep", 1.0))])  # rec is busy for 1 s
    started = time.monotonic()
    relayed = Request(("rec", "count", 10.0), deadline=time.time() + 0.6)
    arrivals: dict[str, float] = {}
    reply = collect(context, send_all(context, relay, [relayed]), 5, arrivals)[
        relayed.correlation_id
    ]
    assert reply.error is not None and reply.error.code == "timeout"
    # At its 0.6 s deadline, not after rec's 1 s of work; 0.2 s of margin, not scaled (past
    # 1 s the bound would mean nothing).
    assert arrivals[relayed.correlation_id] - started < 0.8
    assert collect(context, busy, 5)[busy[0].correlation_id].ok
    assert system.ok(rec, "count") == 2  # the relayed "count" was dropped, never counted


# -- 3. requests whose actor is gone are answered at once --------------------------------------


async def test_a_killed_pool_answers_every_directory_request_at_once(
    actor_system: RunningSystem, bridge: Bridge
) -> None:
    """SIGKILL of a pool: its workers die with it (PR_SET_PDEATHSIG); the root, which
    supervises the pool, tells the directory (Gone), which answers every request it had on
    the pool's workers ``worker_lost`` within a fraction of a second, not at the requests'
    30 s timeout. The next asks find the new pool."""
    start_pool(actor_system, 2, **HEALTH)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    old = node(actor_system.status(), "pool")
    calls = [
        asyncio.ensure_future(directory.ask("pool", 5.0, 30, idempotent=i % 2 == 0))
        for i in range(8)
    ]
    await pool_holds(bridge, actor_system.root, 8)
    os.kill(old.pid, signal.SIGKILL)
    killed = time.monotonic()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    answered = time.monotonic() - killed
    assert all(
        isinstance(o, RemoteFailure) and o.failure.code == "worker_lost" for o in outcomes
    ), outcomes
    # Answered when the pool learns of the death (tens of ms), not at the 5 s ask timeout;
    # 2 s, scaled.
    assert answered < scaled(2.0), f"answered {answered:.2f} s after the kill"
    wait_for(lambda: all(dead(w.pid) for w in old.children), 1, what="the workers' end")

    async def served() -> Any:
        try:
            return await directory.ask("pool", 0.0, 5)
        except RemoteFailure:
            return None

    pid = await wait_for_async(served, 5, "the new pool to serve")
    assert pid not in {w.pid for w in old.children}
    print(
        f"\npool SIGKILL: 8 requests answered in {answered * 1000:.0f} ms; "
        f"served again after {time.monotonic() - killed:.2f} s"
    )


async def test_a_stopped_pool_is_killed_and_its_requests_answered(
    actor_system: RunningSystem, bridge: Bridge, frozen: list[int]
) -> None:
    """SIGSTOP of a pool: its workers still run, but nobody routes to them any more. The
    root kills the pool's process tree after the health timeout, and the directory's requests
    are answered then."""
    start_pool(actor_system, 2, **HEALTH)
    directory = Directory(bridge, actor_system.root)
    await directory.ask("pool", 0.0, 5)
    old = node(actor_system.status(), "pool")
    calls = [asyncio.ensure_future(directory.ask("pool", 10.0, 30)) for _ in range(4)]
    await pool_holds(bridge, actor_system.root, 4)
    stopped_at = freeze(frozen, old.pid)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(
        isinstance(o, RemoteFailure) and o.failure.code == "worker_lost" for o in outcomes
    ), outcomes
    assert time.monotonic() - stopped_at < TIMEOUT_S + RESTART_S
    wait_for(
        lambda: dead(old.pid) and all(dead(w.pid) for w in old.children),
        1,
        what="the pool's process tree to end",
    )


async def test_a_killed_actor_or_its_supervisor_answers_the_directory_at_once(
    actor_system: RunningSystem, bridge: Bridge, tmp_path
) -> None:
    """A path resolved to one actor: when it dies (or a supervisor between the root and it),
    the requests the directory had on it are answered ``worker_lost`` at once. (Long health
    timeouts: the synchronous Recorder, busy in a 5 s handler, cannot answer pings.)"""
    system = actor_system
    journal = Journal(str(tmp_path / "j"))
    patient = {"health_interval_s": 1.0, "health_timeout_s": 10.0}
    system.start(
        ChildSpec(
            "root",
            SUPERVISOR,
            SupervisorArgs(
                (
                    ChildSpec(
                        "sub",
                        SUPERVISOR,
                        SupervisorArgs((ChildSpec("rec", RECORDER, journal),), **patient),
                    ),
                ),
                **patient,
            ),
        )
    )
    directory = Directory(bridge, system.root)
    for victim in ("rec", "sub"):
        await directory.ask("sub/rec", "count", 5)  # resolved (again), watched
        call = asyncio.ensure_future(directory.ask("sub/rec", ("sleep", 5.0), 30))
        # rec sleeps synchronously and cannot say it holds the call: 0.2 s for it to arrive
        await asyncio.sleep(0.2)
        pid = node(system.status(), *(["sub", "rec"] if victim == "rec" else ["sub"])).pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RemoteFailure) as lost:
            await call
        assert lost.value.failure.code == "worker_lost"
        # Answered when the death is seen (tens of ms), not at the call's timeout; 1 s, scaled.
        assert time.monotonic() - killed < scaled(1.0)

        async def served() -> Any:
            try:
                return await directory.ask("sub/rec", "count", 5)
            except RemoteFailure:
                return None

        assert await wait_for_async(served, 5, f"sub/rec back after {victim} was killed") == 1
