"""Batches on real processes: many requests in one Thespian message, each answered exactly as if
it had come alone (correlation ids, failures, a crash), with one message back per requester.

Workers are :class:`tests.support.sample_actors.Recorder` (``"crash"`` raises, ``"pid"`` answers its
pid, anything else counts) and :class:`tests.support.sample_actors.Tally` (counts the requests that
came in a batch).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from thespian.actors import ActorAddress, ActorSystem

from actors.bridge import Bridge, RemoteFailure
from actors.messages import Batch, FailureCode, Located, RemoveChild, Reply, Request, WhereIs
from actors.spec import ChildSpec, PoolArgs, SupervisorArgs
from tests.support.actor_system import RunningSystem, alive, collect
from tests.support.sample_actors import Journal
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.timeout(30)

RECORDER = "tests.support.sample_actors.Recorder"


def start(system: RunningSystem, *children: ChildSpec) -> dict[str, ActorAddress]:
    system.start(ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs(children)))
    located = {c.name: system.ok(system.root, WhereIs(c.name)) for c in children}
    assert all(isinstance(v, Located) for v in located.values())
    return {name: v.address for name, v in located.items()}


def status(system: RunningSystem, name: str):
    return next(c for c in system.status().children if c.name == name)


def codes(replies: dict[str, Reply], requests: list[Request]) -> list[object]:
    """Each request's payload, or its failure code, in request order."""
    return [
        replies[r.correlation_id].payload
        if replies[r.correlation_id].ok
        else replies[r.correlation_id].error.code
        for r in requests
    ]


def test_a_batch_is_answered_in_order_in_one_message(
    actor_system: RunningSystem, context: ActorSystem, tmp_path: Path
) -> None:
    address = start(actor_system, ChildSpec("rec", RECORDER, Journal(str(tmp_path / "j"))))
    requests = [Request(f"item {i}") for i in range(5)]
    context.tell(address["rec"], Batch(tuple(requests)))
    answer = context.listen(5)
    assert isinstance(answer, Batch), answer  # one message carries every reply
    assert [r.correlation_id for r in answer.messages] == [r.correlation_id for r in requests]
    assert [r.payload for r in answer.messages] == [1, 2, 3, 4, 5]
    assert context.listen(0.2) is None


def test_a_crash_mid_batch_answers_the_rest_crashed(
    actor_system: RunningSystem, context: ActorSystem, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    address = start(actor_system, ChildSpec("rec", RECORDER, Journal(str(journal))))
    before = status(actor_system, "rec")
    requests = [
        Request("count"),
        Request("count"),
        Request("effect-then-crash"),
        Request("effect-then-crash"),
        Request("count"),
    ]
    context.tell(address["rec"], Batch(tuple(requests)))
    replies = collect(context, requests, 5)  # fails on a request answered twice
    assert codes(replies, requests) == [1, 2, "crashed", "crashed", "crashed"]
    assert "asked to crash" in replies[requests[2].correlation_id].error.message
    assert "restarting" in replies[requests[3].correlation_id].error.message
    assert context.listen(0.2) is None
    # the requests after the crash never ran: one side effect, not two
    assert [line for line in journal.read_text().splitlines() if line.startswith("effect")] == [
        f"effect rec {before.pid}"
    ]
    after = wait_for(
        lambda: (s := status(actor_system, "rec")).state == "running" and s.pid != before.pid and s,
        5,
        what="the recorder's restart",
    )
    assert after.restarts == 1


def test_a_pool_forwards_one_batch_per_worker(
    actor_system: RunningSystem, context: ActorSystem, tmp_path: Path
) -> None:
    address = start(
        actor_system,
        ChildSpec("pool", "actors.pool.Pool", PoolArgs(RECORDER, 2, Journal(str(tmp_path / "j")))),
    )
    workers = {w.pid for w in status(actor_system, "pool").children}
    requests = [Request("pid") for _ in range(10)]
    context.tell(address["pool"], Batch(tuple(requests)))
    answers = [context.listen(5), context.listen(5)]
    assert context.listen(0.2) is None
    # each worker got its share as one batch and answered it with one batch
    assert all(isinstance(a, Batch) and len(a.messages) == 5 for a in answers), answers
    assert {a.messages[0].payload for a in answers} == workers
    assert all(len({r.payload for r in a.messages}) == 1 for a in answers)
    assert {r.correlation_id for a in answers for r in a.messages} == {
        r.correlation_id for r in requests
    }
    wait_for(
        lambda: all(w.in_flight == 0 for w in status(actor_system, "pool").children),
        2,
        what="the pool's books to balance (one WorkDone batch per worker)",
    )


def test_a_crash_mid_batch_in_a_pool_worker(
    actor_system: RunningSystem, context: ActorSystem, tmp_path: Path
) -> None:
    address = start(
        actor_system,
        ChildSpec("pool", "actors.pool.Pool", PoolArgs(RECORDER, 1, Journal(str(tmp_path / "j")))),
    )
    victim = status(actor_system, "pool").children[0].pid
    requests = [Request("count"), Request("crash"), Request("count", idempotent=True)]
    context.tell(address["pool"], Batch(tuple(requests)))
    replies = collect(context, requests, 5)
    assert codes(replies, requests) == [1, "crashed", "crashed"]
    assert context.listen(0.2) is None

    def restarted():
        worker = status(actor_system, "pool").children[0]
        return worker.state == "running" and worker.pid != victim and worker

    assert wait_for(restarted, 5, what="the worker's restart").in_flight == 0
    assert actor_system.ok(address["pool"], "pid") != victim


def test_an_async_worker_answers_a_batch(actor_system: RunningSystem, context: ActorSystem) -> None:
    address = start(actor_system, ChildSpec("sleeper", "tests.support.sample_actors.Sleeper", 64))
    pid = status(actor_system, "sleeper").pid
    requests = [Request(0.1) for _ in range(20)] + [Request("boom")]
    started = time.monotonic()
    context.tell(address["sleeper"], Batch(tuple(requests)))
    replies = collect(context, requests, 5)
    # Concurrently: about 0.1 s; one after another would take 2 s. 1 s, scaled.
    assert time.monotonic() - started < scaled(1.0)
    assert codes(replies, requests) == [pid] * 20 + ["error"]
    assert context.listen(0.2) is None


async def test_the_bridge_sends_concurrent_asks_as_batches(actor_system: RunningSystem) -> None:
    address = start(actor_system, ChildSpec("tally", "tests.support.sample_actors.Tally"))
    bridge = Bridge(actor_system.asys)
    await bridge.start()
    try:
        payloads = list(range(300))
        assert (
            await asyncio.gather(*(bridge.ask(address["tally"], p, 5) for p in payloads))
            == payloads
        )
        requests, batched = await bridge.ask(address["tally"], "tally", 5)
    finally:
        await bridge.close()
    assert requests == 300
    assert batched > 200, batched  # the asks that queued while a send was under way


async def test_a_batch_to_a_dead_address_fails_every_request(
    actor_system: RunningSystem, tmp_path: Path
) -> None:
    address = start(
        actor_system,
        ChildSpec("rec", RECORDER, Journal(str(tmp_path / "j"))),
        ChildSpec("tally", "tests.support.sample_actors.Tally"),
    )
    pid = status(actor_system, "rec").pid
    assert actor_system.ok(actor_system.root, RemoveChild("rec"))
    wait_for(lambda: not alive(pid), 2, what="the removed actor's process to exit")
    bridge = Bridge(actor_system.asys)
    await bridge.start()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(bridge.ask(address["rec"], i, 5) for i in range(20)),
            *(bridge.ask(address["tally"], i, 5) for i in range(20)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
    finally:
        await bridge.close()
    dead, answered = outcomes[:20], outcomes[20:]
    assert all(
        isinstance(o, RemoteFailure) and o.failure.code == FailureCode.DEAD_ADDRESS for o in dead
    ), dead
    assert answered == list(range(20))  # the other target's batch went through
    # A dead target's batch fails at once (tens of ms), not after the 5 s ask; 1 s, scaled.
    assert elapsed < scaled(1.0)
