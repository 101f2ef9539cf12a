"""The circuit breaker of a provider+model, shared by two processes through one Redis, with
real HTTP against the fake server: it opens after exactly breaker_failures failed attempts
counted across both processes, no request reaches the server while it is open, one probe
after breaker_reset_s, closed again on success; what does not count (429, a 4xx of ours)."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memesys.errors import ErrorCode
from memesys.llm.breaker import CLOSED, OPEN
from memesys.llm.errors import LLMCallError, failure_of
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.llm import calls_in_subprocess, make_engine, write_request
from tests.support.redis_server import shared_prefix

pytestmark = pytest.mark.store

REQUEST = write_request()
FAILURES, RESET_S = 5, 2.0


def policy(redis: str, reset_s: float = RESET_S) -> dict:
    return {
        "max_attempts": 1,
        "breaker_failures": FAILURES,
        "breaker_reset_s": reset_s,
        "redis_url": redis,
        "key_prefix": shared_prefix(f"t{uuid.uuid4().hex[:6]}"),
    }


def call(engine) -> str:
    try:
        engine.complete(REQUEST)
        return "ok"
    except LLMCallError as exc:
        return exc.kind


def test_shared_by_two_processes(fake: FakeOpenAI, redis: str) -> None:
    knobs = policy(redis, reset_s=10.0)  # long enough for another process to start meanwhile
    engine = make_engine(fake.url, **knobs)
    fake.config.fail_status = 500

    # 2 failed attempts here, 2 in another process, 1 here: the 5th opens it, for both.
    assert [call(engine), call(engine)] == ["server", "server"]
    assert calls_in_subprocess(fake.url, 2, knobs) == ["server", "server"]
    assert engine.breaker.state == CLOSED and fake.attempts == 4
    assert call(engine) == "server"
    assert engine.breaker.state == OPEN and fake.attempts == FAILURES

    # Open: nothing reaches the server, from either process, and each refusal is quick and
    # says when the probe comes.
    async def refused() -> tuple[list[str], float]:  # on one loop, as a worker makes its calls
        began = time.perf_counter()
        outcomes = []
        for _ in range(100):
            try:
                await engine.acomplete(REQUEST)
                outcomes.append("ok")
            except LLMCallError as exc:
                outcomes.append(exc.kind)
        return outcomes, (time.perf_counter() - began) / 100

    outcomes, per_call = asyncio.run(refused())
    assert set(outcomes) == {"open"} and per_call < 0.001, per_call
    assert calls_in_subprocess(fake.url, 5, knobs) == ["open"] * 5
    assert fake.attempts == FAILURES
    with pytest.raises(LLMCallError) as raised:
        engine.complete(REQUEST)
    code, after = failure_of(raised.value)
    assert code is ErrorCode.LLM_UNAVAILABLE and 0 < after <= 10.0

    # After the reset time the provider is back: one probe, however many callers in both
    # processes fire at that moment (it answers slowly: the others arrive while it is out).
    fake.config = FakeConfig(latency_s=1.0)
    fake.reset()
    start_at = time.time() + after + 0.05
    with ThreadPoolExecutor(9) as pool:
        there = pool.submit(calls_in_subprocess, fake.url, 8, knobs, callers=8, start_at=start_at)
        time.sleep(max(0.0, start_at - time.time()))  # both processes start at start_at
        here = list(pool.map(lambda _: call(engine), range(8)))
        outcomes = here + there.result()
    assert outcomes.count("ok") == 1 and outcomes.count("open") == 15, outcomes
    assert fake.attempts == fake.calls == 1
    assert engine.breaker.state == CLOSED

    # closed again: calls flow
    fake.config = FakeConfig()
    assert [call(engine) for _ in range(3)] == ["ok"] * 3


def test_exactly_one_probe_in_flight(fake: FakeOpenAI, redis: str) -> None:
    knobs = policy(redis)
    engine = make_engine(fake.url, **knobs)
    fake.config.fail_status = 500
    assert [call(engine) for _ in range(FAILURES)] == ["server"] * FAILURES
    assert engine.breaker.state == OPEN
    fake.config = FakeConfig(latency_s=1.0)
    fake.reset()
    time.sleep(engine.breaker.until_probe() + 0.05)  # the scenario: the reset period passes
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: call(engine), range(16)))
    assert outcomes.count("ok") == 1 and outcomes.count("open") == 15
    assert fake.attempts == 1
    assert engine.breaker.state == CLOSED


def test_a_failed_probe_opens_it_again(fake: FakeOpenAI, redis: str) -> None:
    engine = make_engine(fake.url, **policy(redis))
    fake.config.fail_status = 500
    assert [call(engine) for _ in range(FAILURES)] == ["server"] * FAILURES
    time.sleep(engine.breaker.until_probe() + 0.05)  # the scenario: the reset period passes
    assert call(engine) == "server" and fake.attempts == FAILURES + 1  # the probe
    assert engine.breaker.state == OPEN and call(engine) == "open"
    assert fake.attempts == FAILURES + 1


def test_429s_and_our_4xx_do_not_open_it(fake: FakeOpenAI, redis: str) -> None:
    engine = make_engine(fake.url, **policy(redis))
    fake.config.fail_status, fake.config.retry_after_s = 429, 0
    assert [call(engine) for _ in range(FAILURES * 2)] == ["rate_limited"] * FAILURES * 2
    assert engine.breaker.state == CLOSED
    fake.config = FakeConfig()
    fake.api_key = "another-key"  # every request is now refused 401: our fault
    assert [call(engine) for _ in range(FAILURES * 2)] == ["client"] * FAILURES * 2
    assert engine.breaker.state == CLOSED


def test_retries_stop_when_it_opens(fake: FakeOpenAI, redis: str) -> None:
    """A call's later attempts meet the breaker its own failures opened: attempts stop."""
    engine = make_engine(fake.url, **{**policy(redis), "max_attempts": 10})
    fake.config.fail_status = 500
    with pytest.raises(LLMCallError) as raised:
        engine.complete(REQUEST)
    assert raised.value.kind == "open" and raised.value.attempts == FAILURES
    assert fake.attempts == FAILURES


def test_without_redis_the_breaker_is_the_process_own(fake: FakeOpenAI, tmp_path: Path) -> None:
    engine = make_engine(fake.url, max_attempts=1, breaker_failures=2, breaker_reset_s=5)
    fake.config.fail_status = 500
    assert [call(engine) for _ in range(4)] == ["server", "server", "open", "open"]
    assert fake.attempts == 2


def breaker_commands(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("get", "mget", "set", "incr")
    }


def test_a_closed_breaker_costs_one_redis_read_per_successful_call(
    fake: FakeOpenAI, redis: str
) -> None:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis)
    engine = make_engine(fake.url, **policy(redis))
    assert call(engine) == "ok"  # the breaker's keys exist from here on
    before = breaker_commands(client)
    assert [call(engine) for _ in range(20)] == ["ok"] * 20
    spent = {k: v - before[k] for k, v in breaker_commands(client).items()}
    # at most one MGET of state and failure count each (a read younger than 10 ms is reused);
    # pybreaker's own storage: two GETs and a SET each
    assert 1 <= spent.pop("mget") <= 20 and spent == {"get": 0, "set": 0, "incr": 0}, spent
    fake.config.fail_status = 500
    assert call(engine) == "server"  # a failure is counted...
    fake.config.fail_status = None
    assert call(engine) == "ok"  # ...and the next success clears the run
    assert int(client.get(engine.breaker.cb._state_storage._namespace("fail_counter"))) == 0


def test_calls_that_start_together_share_one_read(fake: FakeOpenAI, redis: str) -> None:
    """A judging group's calls start at once in one process: a read younger than 10 ms is
    reused across threads, so 16 calls at once cost fewer than 16 MGETs (one per thread
    before); a failure still drops it and is counted."""
    import threading

    import redis as redis_client

    client = redis_client.Redis.from_url(redis)
    engine = make_engine(fake.url, **policy(redis))
    assert call(engine) == "ok"
    time.sleep(0.05)  # that call's read is stale: the first of the 16 must read again
    before = breaker_commands(client)
    start = threading.Barrier(16)

    def together() -> str:
        start.wait()
        return call(engine)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lambda _: together(), range(16))) == ["ok"] * 16
    spent = {k: v - before[k] for k, v in breaker_commands(client).items()}
    assert 1 <= spent.pop("mget") < 16 and spent == {"get": 0, "set": 0, "incr": 0}, spent
    fake.config.fail_status = 500
    assert call(engine) == "server"
    fake.config.fail_status = None
    assert int(client.get(engine.breaker.cb._state_storage._namespace("fail_counter"))) == 1
