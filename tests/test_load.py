"""Load on the real daemon with its default capacities, against a fake provider at 50 ms a call:
100 concurrent clients get no error; 1,000 get a meme or a 503 with Retry-After, and none
hangs; 50 identical requests make one meme."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from memesys.testing.fake_openai import FakeConfig
from tests.support.daemon import DaemonProcess
from tests.support.provider import fake_provider_fixture, provider_env
from tests.support.timing import scaled

pytestmark = [pytest.mark.slow, pytest.mark.store, pytest.mark.timeout(180)]

LATENCY_S = 0.05


fake = fake_provider_fixture(FakeConfig(latency_s=LATENCY_S), scope="module")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, fake):
    d = DaemonProcess(
        tmp_path_factory.mktemp("load"),
        {
            **provider_env(fake),
            "MEMESYS_PIPELINE_MAX_REFINE_ROUNDS": "0",
            # the tree's capacity, not the provider's rate limit (10 req/s by default) is measured
            "MEMESYS_LLM_RATE_LIMIT_RPS": "0",
        },
    ).start()
    yield d
    assert d.stop() == []


async def post_all(url: str, bodies: list[dict], timeout_s: float) -> list[tuple[int, dict, dict]]:
    """Every body POSTed at once, each on its own connection: (status, headers, JSON)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: dict) -> tuple[int, dict, dict]:
            async with session.post(
                f"{url}/v1/memes", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as answer:
                return answer.status, dict(answer.headers), await answer.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def statuses(answers) -> dict[int, int]:
    counted: dict[int, int] = {}
    for status, _, _ in answers:
        counted[status] = counted.get(status, 0) + 1
    return counted


def test_100_concurrent_clients_get_no_error(daemon):
    bodies = [{"topic": f"concurrency {i}", "fresh": True} for i in range(100)]
    answers = asyncio.run(post_all(daemon.url, bodies, scaled(60)))
    assert statuses(answers) == {201: 100}, [a[2] for a in answers if a[0] != 201][:3]


def test_1000_concurrent_clients_get_a_meme_or_a_503_with_retry_after(daemon):
    bodies = [{"topic": f"crowd {i}", "fresh": True} for i in range(1000)]
    started = time.monotonic()
    answers = asyncio.run(post_all(daemon.url, bodies, scaled(90)))  # a hang fails the gather
    took = time.monotonic() - started
    counted = statuses(answers)
    assert set(counted) <= {201, 503}, counted
    refused = [(headers, body) for status, headers, body in answers if status == 503]
    assert all(int(headers["Retry-After"]) >= 1 for headers, _ in refused)
    assert {body["error"]["code"] for _, body in refused} <= {"overloaded"}
    assert counted.get(201, 0) >= 100, counted  # the tree kept making memes meanwhile
    print(f"1,000 concurrent: {counted} in {took:.1f} s")


def test_50_identical_requests_make_one_meme(daemon, fake):
    before = fake.calls
    single = asyncio.run(
        post_all(daemon.url, [{"topic": "one topic for all", "seed": 3}], scaled(30))
    )
    calls_per_meme = fake.calls - before
    assert single[0][0] == 201 and calls_per_meme >= 5  # select_write, 3 verifiers, score
    before = fake.calls
    body = {"topic": "fifty of the same", "seed": 11}
    answers = asyncio.run(post_all(daemon.url, [body] * 50, scaled(60)))
    assert statuses(answers) == {201: 50}
    assert len({meme["id"] for _, _, meme in answers}) == 1
    assert fake.calls - before == calls_per_meme  # one generation, counted at the provider
