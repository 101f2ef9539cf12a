"""Hedged calls against the provider's tail (memesys.llm.hedging, the transport's _hedged):
the policy waits for enough answers and keeps to its budget; against the fake, a call stuck
past its stage's hedging point gets one more copy, the first answer wins and the loser is
cancelled; the last call of a fan-out still running is hedged at the sooner straggler point;
under a heavy tail the extra calls stay within the budget; a hedge never goes without a free
send time; processes pool their latencies and their budget through Redis
(memesys.llm.hedge_pool): a new one knows the tail at once, one spends what another's calls
earned, and each keeps to its own while Redis is away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from actors import deadlines
from memesys.llm import hedging as hedging_module
from memesys.llm import served
from memesys.llm.client import close_clients
from memesys.llm.hedge_pool import HedgePool
from memesys.llm.hedging import MIN_SAMPLES, WELL_SAMPLED, Fanout, Hedging
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI, Latency
from tests.support.llm import make_engine, redis_url, write_request
from tests.support.provider import MODEL, fake_provider_fixture

REQUEST = write_request()

# a heavy tail: median 10 ms, p95 100 ms
fake = fake_provider_fixture(
    FakeConfig(latency_s=0.01, latency_dist="lognormal", latency_sigma=1.4, latency_max_s=0.3)
)


@pytest.fixture(autouse=True)
async def clients_closed() -> AsyncIterator[None]:
    """The test's loop ends with the provider clients it opened closed."""
    yield
    await close_clients()


def test_the_policy_waits_for_answers_and_keeps_to_its_budget() -> None:
    hedging = Hedging(quantile=0.9, budget=0.15)
    for i in range(MIN_SAMPLES - 1):
        hedging.answered("score", 1.0 if i % 6 == 5 else 0.1 + i / 1000)
        assert hedging.after("score") is None  # too few answers to know the tail
    hedging.answered("score", 1.0)
    point = hedging.after("score")
    assert point is not None and 0.1 < point.median < 0.12 and point.after == 1.0
    # another stage borrows the model's answers until it has its own
    assert hedging.after("factuality") == point
    # a stage whose answers all come near their median is never hedged: nothing to gain
    for _ in range(MIN_SAMPLES):
        hedging.answered("select_write", 0.5)
    assert hedging.after("select_write") is None
    # a tail of 1.7 medians hedges while the answers are few (a heavy tail's small sample often
    # looks that light), and no longer once there are enough to know it for a moderate one
    moderate = Hedging(quantile=0.9, budget=0.15)
    for i in range(WELL_SAMPLED):
        moderate.answered("write", 1.7 if i % 5 == 4 else 1.0)
        if i + 1 == 2 * MIN_SAMPLES:
            assert moderate.after("write") is not None
    assert moderate.after("write") is None
    spent = 0
    for _ in range(100):
        hedging.called()
        spent += hedging.spend()
    assert spent == 15  # 0.15 of a hedge per call, never ahead of the calls made
    assert not Hedging(quantile=0.9, budget=0.0).enabled


async def warmed(engine, calls: int = MIN_SAMPLES + 5) -> None:
    """Answers enough for the stage's hedging point (the fake's heavy tail)."""
    with served.tracking("score"):
        for _ in range(calls):
            await engine.acomplete(REQUEST)


def pending_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_a_stuck_call_is_hedged_and_the_loser_cancelled(fake: FakeOpenAI) -> None:
    engine = make_engine(fake.url, max_attempts=1, hedge_budget=1.0, hedge_quantile=0.9)
    await warmed(engine)
    assert engine.hedging.after("score") is not None
    # from now on every second request hangs for 1.5 s: a call stuck on one is hedged
    fake.config.fail_kind, fake.config.fail_every, fake.config.fail_hang_s = "hang", 2, 1.5
    before = fake.attempts
    hedges = 0
    for _ in range(4):
        began = time.perf_counter()
        with served.tracking("score_1") as calls, deadlines.serving(time.time() + 3.0):
            assert (await engine.acomplete(REQUEST)).text
        assert time.perf_counter() - began < 0.75  # not the 1.5 s hang
        hedges += calls.hedges
        await asyncio.sleep(0.05)
        assert pending_tasks() == []  # the loser was cancelled, not left to run
    assert hedges >= 2  # at least every other call met a hanging request
    assert 4 < fake.attempts - before <= 4 + hedges
    assert engine.breaker.state == "closed"  # a cancelled loser is not a failure
    await asyncio.sleep(1.5)  # the fake's own handlers of the hung requests end


async def test_hedges_stay_within_their_budget_under_a_heavy_tail(fake: FakeOpenAI) -> None:
    engine = make_engine(fake.url, max_attempts=1, hedge_budget=0.15, hedge_quantile=0.85)
    calls, hedges = 240, 0
    gate = asyncio.Semaphore(12)

    async def one() -> int:
        async with gate:
            with served.tracking("factuality") as made:
                await engine.acomplete(REQUEST)
            return made.hedges

    hedges = sum(await asyncio.gather(*(one() for _ in range(calls))))
    print(f"{calls} calls, {hedges} hedges, {fake.attempts} requests at the fake")
    assert 0 < hedges <= 0.15 * calls
    # a hedge cancelled while it connects never reaches the provider
    assert calls <= fake.attempts <= calls + hedges


async def test_no_hedge_without_a_free_send_time(fake: FakeOpenAI) -> None:
    """With the requests/s limit spent, a stuck call waits for its answer: the hedge would
    have to queue behind the schedule, which a hedge never does."""
    engine = make_engine(
        fake.url, max_attempts=1, hedge_budget=1.0, hedge_quantile=0.9, rate_limit_rps=1000
    )
    await warmed(engine)
    engine.limiter.rps = 1  # the schedule is now a second per send: none free at once
    await engine.limiter.acquire(1, None, 5)  # takes this second's send time
    fake.config.latency_by_model = {MODEL: Latency(0.3)}
    with served.tracking("score") as calls, deadlines.serving(time.time() + 5.0):
        await engine.acomplete(REQUEST)
    assert calls.hedges == 0


async def test_the_last_call_of_a_fanout_still_running_is_hedged_sooner(fake: FakeOpenAI) -> None:
    """Two calls, one stuck: alone, the stuck one waits for the 1 s hedging point; in a fan-out,
    once the other has answered it is the straggler, hedged at the 10 ms straggler point."""
    engine = make_engine(
        fake.url,
        max_attempts=1,
        hedge_budget=1.0,
        hedge_quantile=0.99,
        hedge_straggler_quantile=0.8,
    )
    for i in range(30):  # the slowest 5 of 30 answers took 1 s: hedge after 1 s, or 10 ms
        engine.hedging.answered("score", 1.0 if i < 5 else 0.01)
    point = engine.hedging.after("score")
    assert point is not None and point.after == 1.0 and point.straggler_after == 0.01
    fake.config.latency_s, fake.config.latency_dist = 0.01, "fixed"

    async def one(stage: str) -> int:
        with served.tracking(stage) as calls, deadlines.serving(time.time() + 5.0):
            await engine.acomplete(REQUEST)
        return calls.hedges

    async def pair(group: Fanout | None) -> tuple[float, int]:
        fake.config.fail_kind, fake.config.fail_every, fake.config.fail_hang_s = "hang", 2, 1.5
        fake._faultable = 0  # the second of the next two requests hangs, not the hedge (third)
        engine.hedging.credit = 2.0
        began = time.perf_counter()
        calls = [one("score"), one("factuality")]
        hedges = await asyncio.gather(*(group.member(c) if group else c for c in calls))
        fake.config.fail_every = 0
        return time.perf_counter() - began, sum(hedges)

    alone, alone_hedges = await pair(None)
    assert alone >= 1.0 and alone_hedges == 1  # hedged at its quantile point only
    together, hedges = await pair(Fanout())
    assert together < 0.5 and hedges == 1  # neither the 1 s point nor the 1.5 s hang
    await asyncio.sleep(1.5)  # the fake's handlers of the hung requests end


def test_a_fanout_names_its_last_running_member_the_straggler() -> None:
    async def main() -> list[bool]:
        group, release = Fanout(), [asyncio.Event() for _ in range(3)]
        seen: list[bool] = []

        async def member(n: int) -> None:
            await release[n].wait()
            event = hedging_module.straggling()
            assert event is not None
            if n == 2:
                seen.append(event.is_set())  # it is the last: set once the others ended

        tasks = [asyncio.ensure_future(group.member(member(n))) for n in range(3)]
        await asyncio.sleep(0)
        first = hedging_module.straggling()
        for n in range(3):
            release[n].set()
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        seen.append(first is None)  # outside any member: no fan-out
        return seen

    assert asyncio.run(main()) == [True, True]


def test_processes_pool_their_latencies_so_a_new_one_knows_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hedging_module, "SHARE_EVERY_S", 0.0)
    with redis_url(tmp_path) as url:
        prefix = f"t{time.monotonic_ns()}"
        old = Hedging(0.9, 0.15, 0.8, HedgePool(url, prefix, "fake/m"))
        for i in range(MIN_SAMPLES + 5):
            old.answered("select_write", 2.0 if i % 10 == 0 else 0.5)
        new = Hedging(0.9, 0.15, 0.8, HedgePool(url, prefix, "fake/m"))
        point = new.after("select_write")  # before any answer of its own
        assert point is not None and point.median == 0.5 and point.after == 2.0
        assert new.after("factuality") == point  # the model's answers over every stage
        client = redis.Redis.from_url(url)
        try:
            keys = sorted(k.decode() for k in client.scan_iter(f"{prefix}:*"))
            latency = f"{prefix}:llm:hedge/fake/m/latency/"
            assert keys == [latency, f"{latency}select_write"]
            assert client.llen(keys[1]) == MIN_SAMPLES + 5
            client.delete(*keys)
        finally:
            client.close()


def test_without_redis_a_process_keeps_to_its_own_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hedging_module, "SHARE_EVERY_S", 0.0)
    alone = Hedging(0.9, 0.15, 0.8, HedgePool("redis://127.0.0.1:1/0", "t", "fake/m"))
    with caplog.at_level(logging.WARNING, logger="memesys.llm"):
        for _ in range(MIN_SAMPLES):
            alone.answered("score", 1.0)
    point = alone.after("score")
    assert point is None  # its own answers: all near their median, nothing to gain
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per answer


def test_one_budget_for_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator's calls earn hedges a verifier may spend: the budget is the cluster's."""
    monkeypatch.setattr(hedging_module, "SHARE_EVERY_S", 0.0)
    with redis_url(tmp_path) as url:
        prefix = f"t{time.monotonic_ns()}"
        earner = Hedging(0.85, 0.15, 0.8, HedgePool(url, prefix, "fake/m"))
        spender = Hedging(0.85, 0.15, 0.8, HedgePool(url, prefix, "fake/m"))
        assert not spender.spend()  # nothing earned yet, anywhere
        for _ in range(21):  # 21 calls earn 3.15 hedges, pushed with the next answer
            earner.called()
        earner.answered("select_write", 0.5)
        assert [spender.spend() for _ in range(4)] == [True, True, True, False]
        spender.refund()  # one taken but not sent goes back with its next exchange
        spender.answered("score", 0.5)
        assert spender.spend() and not spender.spend()
        client = redis.Redis.from_url(url)
        try:
            client.delete(*client.scan_iter(f"{prefix}:*"))
        finally:
            client.close()
