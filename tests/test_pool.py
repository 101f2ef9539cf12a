"""The worker pool on real processes: dispatch, lost workers, resizing, overload.

Workers are :class:`tests.support.sample_actors.Sleeper` async actors: a request ``seconds``
sleeps that long without blocking the worker's mailbox and answers the worker's pid.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.messages import (
    Ack,
    Located,
    Ping,
    Pong,
    RemoveChild,
    Request,
    Resize,
    WhereIs,
)
from actors.spec import Backoff, ChildSpec, PoolArgs, SupervisorArgs
from tests.support.actor_system import RunningSystem, alive, collect, send_all
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.timeout(30)

SLEEPER = "tests.support.sample_actors.Sleeper"


def start_pool(system: RunningSystem, size: int, **kwargs) -> ActorAddress:
    pool = ChildSpec("pool", "actors.pool.Pool", PoolArgs(SLEEPER, size, **kwargs))
    root = system.start(ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs((pool,))))
    located = system.ok(root, WhereIs("pool"))
    assert isinstance(located, Located)
    return located.address


def workers(system: RunningSystem) -> dict:
    """The pool's workers by name, as the root's status tree shows them."""
    pool = next(c for c in system.status().children if c.name == "pool")
    return {w.name: w for w in pool.children}


def test_least_outstanding_dispatch_spreads_concurrent_requests(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    pool = start_pool(system, 3)
    assert isinstance(system.ok(pool, Ping()), Pong)
    started = time.monotonic()
    requests = send_all(context, pool, (Request(0.3) for _ in range(30)))
    in_flight = {name: w.in_flight for name, w in workers(system).items()}
    assert in_flight == {"worker-0": 10, "worker-1": 10, "worker-2": 10}
    replies = collect(context, requests, 5)
    elapsed = time.monotonic() - started
    assert all(r.ok for r in replies.values())
    by_pid = Counter(r.payload for r in replies.values())
    assert sorted(by_pid.values()) == [10, 10, 10]
    assert set(by_pid) == {w.pid for w in workers(system).values()}
    # 30 x 0.3 s on 3 async workers at once: about 0.3 s (9 s one after another); 1.5 s, scaled.
    assert elapsed < scaled(1.5), f"30 x 0.3 s on 3 workers took {elapsed:.2f} s"
    wait_for(
        lambda: all(w.in_flight == 0 for w in workers(system).values()),
        2,
        what="the pool's in-flight counts back to 0",
    )


def test_a_lost_worker_fails_or_retries_its_requests(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    pool = start_pool(system, 3)
    # fresh workers, ties broken in order: request i goes to worker-(i % 3)
    requests = send_all(context, pool, (Request(1.5, idempotent=i in (0, 4, 5)) for i in range(6)))
    before = workers(system)
    assert [w.in_flight for w in before.values()] == [2, 2, 2]
    victim = before["worker-0"].pid
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    arrivals: dict[str, float] = {}
    replies = collect(context, requests, 5, arrivals)

    lost = replies[requests[3].correlation_id]  # not idempotent: answered at once
    assert lost.error is not None and lost.error.code == "worker_lost"
    assert arrivals[requests[3].correlation_id] - killed < 1.0  # not when the call would end
    retried = replies[requests[0].correlation_id]  # idempotent: done by another worker
    assert retried.ok and retried.payload != victim
    assert retried.payload in {before["worker-1"].pid, before["worker-2"].pid}
    for i in (1, 2, 4, 5):
        assert replies[requests[i].correlation_id].ok, i

    def replaced() -> dict:
        now = workers(system)
        fresh = now["worker-0"]
        return now if fresh.state == "running" and fresh.pid != victim else {}

    now = wait_for(replaced, 5, what="the pool to restart worker-0")
    assert now["worker-0"].restarts == 1 and not alive(victim)
    # WorkDone travels apart from the reply: the pool's books balance soon after
    wait_for(
        lambda: all(w.in_flight == 0 for w in workers(system).values()),
        2,
        what="the pool's in-flight counts back to 0",
    )


def test_resize_up_and_down(actor_system: RunningSystem, context: ActorSystem) -> None:
    system = actor_system
    pool = start_pool(system, 2)
    assert system.ok(pool, Resize(4)) == Ack("4 workers")
    now = workers(system)
    assert list(now) == ["worker-0", "worker-1", "worker-2", "worker-3"]
    assert all(w.state == "running" for w in now.values())
    replies = collect(context, send_all(context, pool, (Request(0.2) for _ in range(8))), 5)
    assert Counter(r.payload for r in replies.values()) == {w.pid: 2 for w in now.values()}

    # shrink while the workers to be removed hold requests: those are answered first (the
    # requester keeps listening: a worker's reply waits until its recipient takes it)
    requests = send_all(context, pool, [Request(0.4) for _ in range(64)] + [Request(Resize(1))])
    replies = collect(context, requests, 5)
    assert replies.pop(requests[-1].correlation_id).payload == Ack("1 workers")
    assert all(r.ok for r in replies.values()), [r.error for r in replies.values()]
    assert context.listen(0.2) is None, "a request answered twice"
    after = workers(system)
    assert list(after) == ["worker-0"] and after["worker-0"].pid == now["worker-0"].pid
    for name in ("worker-1", "worker-2", "worker-3"):
        wait_for(lambda: not alive(now[name].pid), 2, what=f"{name} to exit")  # noqa: B023
    replies = collect(context, send_all(context, pool, [Request(0.0)]), 5)
    assert [r.payload for r in replies.values()] == [now["worker-0"].pid]
    assert system.ask(pool, Resize(-1)).error.code == "bad_request"


def test_overload_past_max_outstanding_on_every_worker(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    pool = start_pool(system, 2, max_outstanding=2)
    busy = send_all(context, pool, (Request(1.0) for _ in range(4)))
    started = time.monotonic()
    refused = system.ask(pool, 0.0, timeout=2)
    assert refused.error is not None and refused.error.code == "overloaded"
    # Refused at once (milliseconds), not queued behind 1 s requests; 0.5 s, scaled.
    assert time.monotonic() - started < scaled(0.5)
    assert all(r.ok for r in collect(context, busy, 5).values())
    # WorkDone travels apart from the reply: capacity is back once the pool's books balance
    wait_for(
        lambda: all(w.in_flight == 0 for w in workers(system).values()),
        2,
        what="the pool's in-flight counts back to 0",
    )
    assert system.ask(pool, 0.0).ok


def test_requests_waiting_for_a_worker_are_answered_when_the_pool_stops(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    pool = start_pool(system, 1, wait_s=5.0, backoff=Backoff(initial_s=2.0, max_s=2.0, jitter=0.0))
    os.kill(workers(system)["worker-0"].pid, signal.SIGKILL)
    wait_for(
        lambda: workers(system)["worker-0"].state != "running",
        2,
        what="the pool to see its worker die",
    )
    waiting = send_all(context, pool, [Request(0.0)])  # waits for the restart, 2 s away
    wait_for(
        lambda: next(c for c in system.status().children if c.name == "pool").in_flight == 1,
        2,
        what="the request waiting in the pool",
    )
    started = time.monotonic()
    context.tell(system.root, Request(RemoveChild("pool")))  # an ordered stop of the pool
    reply = collect(context, waiting, 5)[waiting[0].correlation_id]
    assert reply.error is not None and reply.error.code == "unavailable"
    assert "stopping" in reply.error.message
    # Answered by the ordered stop (tens of ms), not when the pool would have given up (5 s);
    # 1 s, scaled.
    assert time.monotonic() - started < scaled(1.0)
