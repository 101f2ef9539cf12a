"""The async-actor primitive on a real process: one
:class:`tests.support.sample_actors.Sleeper` holds many concurrent calls, bounds them, and
fails only the call whose coroutine raised."""

from __future__ import annotations

import time

import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.messages import Cancel, Located, Ping, Pong, Request, WhereIs
from actors.spec import ChildSpec, SupervisorArgs
from tests.support.actor_system import RunningSystem, collect, send_all
from tests.support.timing import scaled

pytestmark = pytest.mark.timeout(30)


def start_sleeper(system: RunningSystem, max_in_flight: int) -> ActorAddress:
    sleeper = ChildSpec("sleeper", "tests.support.sample_actors.Sleeper", max_in_flight)
    root = system.start(
        ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs((sleeper,)))
    )
    located = system.ok(root, WhereIs("sleeper"))
    assert isinstance(located, Located)
    return located.address


def sleeper_status(system: RunningSystem):
    return next(c for c in system.status().children if c.name == "sleeper")


def test_one_process_holds_200_concurrent_calls(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 256)
    pid = sleeper_status(system).pid
    started = time.monotonic()
    replies = collect(context, send_all(context, sleeper, (Request(0.2) for _ in range(200))), 5)
    elapsed = time.monotonic() - started
    assert all(r.ok and r.payload == pid for r in replies.values())
    # Concurrent: about 0.2 s (one call's sleep); one after another would take 40 s. 1.5 s,
    # scaled, leaves room for 200 messages through one mailbox on 2 shared cores.
    assert elapsed < scaled(1.5), f"200 concurrent 0.2 s calls took {elapsed:.2f} s"


def test_past_max_in_flight_requests_are_refused(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 4)
    requests = send_all(context, sleeper, (Request(0.5) for _ in range(6)))
    replies = collect(context, requests, 5)
    codes = [
        replies[r.correlation_id].error.code if replies[r.correlation_id].error else "ok"
        for r in requests
    ]
    assert codes == ["ok"] * 4 + ["overloaded"] * 2
    assert system.ask(sleeper, 0.0).ok  # capacity is back once the calls finished


def test_a_failing_coroutine_fails_only_its_request(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 64)
    before = sleeper_status(system)
    requests = send_all(context, sleeper, [Request(0.3), Request("boom"), Request(0.3)])
    replies = collect(context, requests, 5)
    ok1, boom, ok2 = (replies[r.correlation_id] for r in requests)
    assert ok1.ok and ok2.ok and ok1.payload == ok2.payload == before.pid
    assert boom.error is not None and boom.error.code == "error"
    assert "coroutine failed" in boom.error.message
    after = sleeper_status(system)
    assert (after.pid, after.restarts, after.state) == (before.pid, 0, "running")


def test_ping_answers_without_reaching_handle(actor_system: RunningSystem) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 64)
    pid = sleeper_status(system).pid
    assert system.ok(sleeper, Ping()) == Pong("sleeper", pid)
    assert sleeper_status(system).restarts == 0


def test_a_cancel_stops_the_coroutine_and_answers_cancelled(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 64)
    long, other = Request(30.0), Request(0.3)
    send_all(context, sleeper, [long, other])
    time.sleep(scaled(0.1))
    started = time.monotonic()
    context.tell(sleeper, Cancel(long.correlation_id))
    replies = collect(context, [long, other], 5)
    assert replies[long.correlation_id].error is not None
    assert replies[long.correlation_id].error.code == "cancelled"
    assert time.monotonic() - started < scaled(5)  # not the 30 s sleep
    assert replies[other.correlation_id].ok  # only the one named
    assert sleeper_status(system).in_flight == 0  # its slot is free again


def test_a_cancel_that_overtakes_its_request_answers_it_unstarted(
    actor_system: RunningSystem, context: ActorSystem
) -> None:
    system = actor_system
    sleeper = start_sleeper(system, 64)
    system.ask(sleeper, 0.0)  # the loop runs
    late = Request(30.0)
    context.tell(sleeper, Cancel(late.correlation_id))
    replies = collect(context, send_all(context, sleeper, [late]), 5)
    assert replies[late.correlation_id].error.code == "cancelled"
