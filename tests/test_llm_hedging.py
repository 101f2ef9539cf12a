"""Hedged calls against the provider's tail (memesys.llm.hedging, the transport's _hedged):
the policy waits for enough answers and keeps to its budget; against the fake, a call stuck
past its stage's hedging point gets one more copy, the first answer wins and the loser is
cancelled; under a heavy tail the extra calls stay within the budget; a hedge never goes
without a free send time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from actors import deadlines
from memesys.llm import served
from memesys.llm.client import close_clients
from memesys.llm.hedging import MIN_SAMPLES, Hedging
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI, Latency
from tests.support.llm import make_engine, write_request
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
    after, median = hedging.after("score") or (0.0, 0.0)
    assert 0.1 < median < 0.12 and after == 1.0
    # another stage borrows the model's answers until it has its own
    assert hedging.after("factuality") == (after, median)
    # a stage whose answers all come near their median is never hedged: nothing to gain
    for _ in range(MIN_SAMPLES):
        hedging.answered("select_write", 0.5)
    assert hedging.after("select_write") is None
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
