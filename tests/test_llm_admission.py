"""Admission by the provider's budget (the provider scheduler, memesys.pipeline.admission),
against the fake provider over HTTP enforcing its own limit and a real Redis: a meme whose
calls do not fit in the schedule before its deadline is refused before any call, with a
Retry-After after which it is served; booked calls are never refused for rate; under
saturation admitted memes finish in the order they started and no call is spent on a meme
that is not delivered; tasks use what people's memes leave."""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from actors import deadlines
from memesys.config import Config, load_layers
from memesys.domain.messages import GenerateMeme
from memesys.errors import ErrorCode
from memesys.inprocess.engine import InProcessEngine
from memesys.llm import reservations
from memesys.llm.errors import LLMCallError, failure_of
from memesys.llm.limiter import BACKGROUND_LEAD_S, Limiter, NoSlot
from memesys.llm.metrics import render
from memesys.pipeline.errors import MemeFailed
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.llm import make_engine, write_request
from tests.support.metrics import sample
from tests.support.provider import fake_provider_fixture, provider_env

pytestmark = pytest.mark.store

R = 10  # requests a second: the daemon's limit and the fake's own
fake = fake_provider_fixture(FakeConfig(latency_s=0.05, limit_requests=R, limit_window_s=1.0))


def config(fake: FakeOpenAI, **env: str) -> Config:
    base = {
        "MEMESYS_REDIS_KEY_PREFIX": f"admit-{uuid.uuid4().hex[:8]}",
        "MEMESYS_LLM_RATE_LIMIT_RPS": str(R),
        "MEMESYS_PIPELINE_MAX_REFINE_ROUNDS": "0",
    }
    return load_layers(None, env={**provider_env(fake), **base, **env}).build()


@pytest.fixture
def run() -> Iterator[Callable[..., Any]]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def engine_for(redis: str, run, fake, tmp_path: Path) -> Iterator[Callable[..., InProcessEngine]]:
    made: list[InProcessEngine] = []

    def build(**env: str) -> InProcessEngine:
        images = {"MEMESYS_STORAGE_IMAGE_DIR": str(tmp_path / "images")}
        made.append(InProcessEngine(config(fake, **images, **env), redis))
        return made[-1]

    yield build
    for engine in made:
        run(engine.close())


def limiter_of(engine: InProcessEngine) -> Limiter:
    transport = engine.maker.handle_for("select_write").transport
    assert transport is not None and transport.limiter.rps == R
    return transport.limiter


def fill(limiter: Limiter, seconds: float) -> None:
    """Book the schedule ``seconds`` ahead (someone else's memes)."""
    limiter.book(int(seconds * R), 3600.0)


def refused(run, engine: InProcessEngine, order: GenerateMeme, timeout_s: float) -> MemeFailed:
    began = time.monotonic()
    with pytest.raises(MemeFailed) as failed:
        run(engine.generate(order, timeout_s))
    assert failed.value.code is ErrorCode.LLM_RATE_LIMITED, failed.value
    assert time.monotonic() - began < 0.5  # at once, not after waiting
    return failed.value


def test_a_meme_that_does_not_fit_is_refused_before_any_call_and_served_after_retry_after(
    engine_for, run, fake, redis: str
) -> None:
    engine = engine_for()
    fill(limiter_of(engine), 4.0)
    fake.reset()
    order = GenerateMeme("cats at work", fresh=True)
    failure = refused(run, engine, order, 2.0)
    assert fake.attempts == 0  # nothing reached the provider
    transport = engine.maker.handle_for("select_write").transport
    assert transport is not None
    transport.metrics.flush()  # the refusal is counted where /metrics reads it
    prefix = transport.metrics.key.removesuffix(":llm:metrics")
    text = render(redis_lib.Redis.from_url(redis), prefix)
    at = {"model": transport.name, "lane": "interactive"}
    assert sample(text, "memesys_llm_schedule_refusals_total", **at) == 1
    # Its last call would go ~4.5 s from now; it may wait ~1 s (2 s less a call's expected
    # time): fit in ~3.5 s.
    assert failure.retry_after is not None and 2.5 <= failure.retry_after <= 4.5, failure
    time.sleep(math.ceil(failure.retry_after))  # as a client reads the header
    meme = run(engine.generate(order, 2.0))
    assert meme["provider"]["stages"] and fake.rate_limited == 0


def test_booked_calls_are_never_refused_for_rate(fake, redis: str) -> None:
    transport = make_engine(
        fake.url, rate_limit_rps=R, redis_url=redis, key_prefix=f"admit-{uuid.uuid4().hex[:8]}"
    )
    limiter = transport.limiter
    booked = reservations.Booked({limiter.name: limiter.book(5, 2.0)})
    fill(limiter, 20.0)  # every send time not booked is now 20 s away
    fake.reset()
    request = write_request()
    with deadlines.serving(time.time() + 2.0), reservations.holding(booked):
        with ThreadPoolExecutor(5) as pool:
            calls = [
                pool.submit(contextvars.copy_context().run, transport.complete, request)
                for _ in range(5)
            ]
            answers = [call.result() for call in calls]
        with pytest.raises(LLMCallError) as unbooked:
            transport.complete(request)  # the sixth: past the booking, no slot in time
    assert len(answers) == 5 and fake.calls == 5 and fake.rate_limited == 0
    assert failure_of(unbooked.value).code is ErrorCode.LLM_RATE_LIMITED


def test_under_saturation_started_memes_finish_in_order_and_no_call_is_wasted(
    engine_for, run, fake
) -> None:
    engine = engine_for()
    fake.reset()
    finished: list[tuple[float, int, Any]] = []

    async def one(index: int) -> None:
        await asyncio.sleep(0.1 * index)  # 10 memes a second for 1.2 s: 5 times the budget
        order = GenerateMeme(f"topic {index} coffee", fresh=True)
        try:
            outcome: Any = await engine.generate(order, 3.0)
        except MemeFailed as exc:
            outcome = exc
        finished.append((time.monotonic(), index, outcome))

    async def burst() -> None:
        await asyncio.gather(*(one(i) for i in range(12)))

    run(burst())
    delivered = [(at, i, meme) for at, i, meme in finished if isinstance(meme, dict)]
    failures = [outcome for _, _, outcome in finished if isinstance(outcome, MemeFailed)]
    assert len(delivered) + len(failures) == 12
    assert all(failure.code is ErrorCode.LLM_RATE_LIMITED for failure in failures), failures
    assert 2 <= len(delivered) <= 9, [i for _, i, _ in delivered]
    # Every call the provider saw was a stage of a delivered meme.
    assert fake.attempts == sum(len(meme["provider"]["stages"]) for _, _, meme in delivered)
    assert fake.rate_limited == 0
    # Admitted in the order they came, they finish in that order.
    by_finish = [i for _, i, _ in sorted(delivered, key=lambda entry: entry[0])]
    assert by_finish == sorted(by_finish), by_finish


def test_tasks_use_what_people_leave(engine_for, run, fake) -> None:
    engine = engine_for()  # a person's meme may book 2 s ahead, a task's 0.5 s
    fill(limiter_of(engine), 1.0)
    fake.reset()
    task = GenerateMeme("a task's topic", fresh=True, background=True)
    failure = refused(run, engine, task, 30.0)  # its deadline is far; the backlog is not
    assert fake.attempts == 0
    assert failure.retry_after is not None and 0.3 <= failure.retry_after <= 2.0, failure
    # A person's meme at the same moment is admitted behind the second booked.
    meme = run(engine.generate(GenerateMeme("a person's topic", fresh=True), 10.0))
    assert meme["provider"]["stages"]
    time.sleep(0.5)
    assert run(engine.generate(task, 30.0))["provider"]["stages"]  # the schedule has room now


def a_limiter(redis: str) -> Limiter:
    return Limiter("lanes/model", R, 0, redis, f"lanes-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "without-redis"])
def test_a_persons_meme_goes_before_the_calls_tasks_booked(run, redis: str, shared: bool) -> None:
    limiter = a_limiter(redis) if shared else Limiter("lanes/model", R, 0)
    tasks = [limiter.book(5, 30.0, background=True, max_queue=10.0) for _ in range(6)]
    began = time.time()
    assert tasks[-1][-1] - began > 2.5  # six tasks' calls planned 3 s ahead
    person = limiter.book(5, 10.0, max_queue=2.0)
    assert person[0] - began < 0.15  # not behind them: the tasks took no send time
    # The first task's first call, due now, takes a free send time when it comes: after the
    # person's booked ones. A person's call booked by none (a refinement's), asked for
    # while the task's call waits, goes with the person's, not behind the tasks' 3 s.

    async def calls() -> tuple[float, float]:
        task = asyncio.ensure_future(
            limiter.acquire(100, time.time() + 30.0, 30.0, tasks[0][0], background=True)
        )
        await asyncio.sleep(0.05)
        await limiter.acquire(100, time.time() + 10.0, 10.0)
        refinement_sent = time.time()
        return began + await task, refinement_sent

    task_sent, refinement_sent = run(calls())
    assert task_sent >= person[-1] - 0.01, (task_sent - began, person[-1] - began)
    assert refinement_sent - began < person[-1] - began + 0.15, refinement_sent - began


def test_a_tasks_call_is_refused_only_at_its_deadline(run, redis: str) -> None:
    limiter = a_limiter(redis)
    fill(limiter, 3.0)  # people's memes hold the next 3 s
    began = time.time()
    with pytest.raises(NoSlot):
        run(limiter.acquire(100, began + 1.0, 1.0, background=True))
    assert time.time() - began < 0.3  # at once: its deadline comes before a free time
    waited = run(limiter.acquire(100, began + 10.0, 10.0, background=True))
    assert 2.5 <= waited <= 3.5


def test_a_tasks_call_takes_no_send_time_past_its_deadline(run, redis: str) -> None:
    limiter = a_limiter(redis)
    limiter.book(R // 2, 3600.0)  # people's memes (a burst, then one every 1 / R s)
    free_at = limiter.book(1, 3600.0)[0] + 1.0 / R  # the next send time free
    time.sleep(max(0.0, free_at - 0.065 - time.time()))  # now it is free within the lead
    assert 0.03 < free_at - time.time() < BACKGROUND_LEAD_S
    began = time.time()
    with pytest.raises(NoSlot):  # within the lead, but past the call's own deadline
        run(limiter.acquire(100, began + 0.02, 0.02, background=True))
    assert time.time() - began < 0.02  # at once, not after sleeping past its deadline
    assert abs(limiter.book(1, 3600.0)[0] - free_at) < 0.01  # and the send time still free


def test_without_redis_a_booking_is_all_or_nothing() -> None:
    limiter = Limiter("local/model", R, 0)  # no Redis: this process's own schedule
    first = limiter.book(5, 10.0)
    assert len(first) == 5 and first == sorted(first)
    with pytest.raises(NoSlot) as full:
        limiter.book(50, 1.0)
    assert full.value.retry_after > 2.0
    after = limiter.book(5, 10.0)  # the refused booking took nothing
    assert after[0] - first[-1] < 0.5
