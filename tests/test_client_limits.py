"""Per-client request limits (``gateway.client_rate_per_minute``): the gateway in process
against real Redis, clients named by tokens of the real ``memesys-admin`` (or by their
address with auth off), the count shared through Redis by every gateway."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from memesys.config import ConfigError, load
from memesys.domain.messages import GenerateMeme
from memesys.http.app import Gateway
from memesys.http.client_limits import ClientLimits
from memesys.storage.tokens import TokenReader
from memesys.testing.ports import free_port
from tests.support.gateway import GATEWAY, FakeDirectory, a_meme, error_of
from tests.support.timing import scaled
from tests.support.tokens import bearer, made

pytestmark = pytest.mark.store

RATE = 3


@pytest.fixture
async def limits(redis_env: str, prefix: str) -> AsyncIterator[ClientLimits]:
    shared = ClientLimits(RATE, redis_env, prefix)
    yield shared
    await shared.close()


def a_gateway(
    limits: ClientLimits, tokens: TokenReader | None, directory: FakeDirectory | None = None
) -> Gateway:
    """Auth required when ``tokens`` is given, else off; the limit RATE."""
    cfg = dataclasses.replace(
        GATEWAY, auth="required" if tokens else "off", client_rate_per_minute=RATE
    )
    return Gateway(
        cfg,
        directory or FakeDirectory(),
        verify_token=tokens.verify if tokens else None,
        client_limits=limits,
    )


@pytest.fixture
async def http(aiohttp_client: Callable, limits: ClientLimits, reader: TokenReader) -> Any:
    return await aiohttp_client(a_gateway(limits, reader).app())


def test_the_setting_is_a_count_a_minute_and_off_by_default() -> None:
    assert load(env={}).gateway.client_rate_per_minute == 0
    cfg = load(env={"MEMESYS_GATEWAY_CLIENT_RATE_PER_MINUTE": "120"}).gateway
    assert cfg.client_rate_per_minute == 120
    with pytest.raises(ConfigError, match=r"gateway\.client_rate_per_minute"):
        load(env={"MEMESYS_GATEWAY_CLIENT_RATE_PER_MINUTE": "-1"})
    with pytest.raises(ValueError, match="client_rate_per_minute"):
        Gateway(dataclasses.replace(GATEWAY, client_rate_per_minute=5), FakeDirectory())


async def test_past_its_limit_a_client_gets_429_and_another_is_unaffected(
    http,
    run_admin,
) -> None:
    alice, bob = made(run_admin, "alice"), made(run_admin, "bob")
    for _ in range(RATE):
        assert (await http.get("/v1/formats", headers=bearer(alice))).status == 200
    refused = await http.get("/v1/formats", headers=bearer(alice))
    error = await error_of(refused, 429, "rate_limited")
    assert f"at most {RATE} requests a minute" in error["message"]
    # The window is a minute and was just filled: room comes back in under a minute, not now.
    assert 60 - scaled(10) < int(refused.headers["Retry-After"]) <= 60
    await error_of(
        await http.post("/v1/memes", json={"topic": "x"}, headers=bearer(alice)),
        429,
        "rate_limited",
    )
    for _ in range(RATE):
        assert (await http.get("/v1/formats", headers=bearer(bob))).status == 200


async def test_the_limit_refuses_before_the_tree_is_asked(
    aiohttp_client,
    limits,
    reader,
    run_admin,
) -> None:
    directory = FakeDirectory()
    directory.script(GenerateMeme, lambda order: a_meme())
    http = await aiohttp_client(a_gateway(limits, reader, directory).app())
    alice = made(run_admin, "alice")
    for _ in range(RATE):
        answer = await http.post("/v1/memes", json={"topic": "x"}, headers=bearer(alice))
        assert answer.status == 201
    asked = len(directory.asked)
    await error_of(
        await http.post("/v1/memes", json={"topic": "x"}, headers=bearer(alice)),
        429,
        "rate_limited",
    )
    assert len(directory.asked) == asked


async def test_every_gateway_on_the_redis_counts_a_client_once(
    aiohttp_client,
    redis_env,
    prefix,
    reader,
    run_admin,
) -> None:
    one, two = ClientLimits(RATE, redis_env, prefix), ClientLimits(RATE, redis_env, prefix)
    first = await aiohttp_client(a_gateway(one, reader).app())
    second = await aiohttp_client(a_gateway(two, reader).app())
    alice = made(run_admin, "alice")
    for http in (first, second, first):
        assert (await http.get("/v1/formats", headers=bearer(alice))).status == 200
    for http in (first, second):
        await error_of(await http.get("/v1/formats", headers=bearer(alice)), 429, "rate_limited")
    await one.close()
    await two.close()


async def test_without_auth_a_client_is_its_address_whatever_token_it_sends(
    aiohttp_client,
    limits,
) -> None:
    http = await aiohttp_client(a_gateway(limits, None).app())
    for n in range(RATE):
        answer = await http.get("/v1/formats", headers=bearer(f"name{n}.unchecked"))
        assert answer.status == 200
    await error_of(await http.get("/v1/formats", headers=bearer("fresh.name")), 429, "rate_limited")
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
        assert (await http.get(path)).status == 200, path  # never counted, never refused


async def test_a_limited_client_still_reads_metrics_with_its_token(http, run_admin) -> None:
    alice = made(run_admin, "alice")
    for _ in range(RATE + 1):
        await http.get("/v1/formats", headers=bearer(alice))
    assert (await http.get("/metrics", headers=bearer(alice))).status == 200


async def test_when_redis_cannot_count_the_answer_is_503_not_a_pass(aiohttp_client, prefix) -> None:
    nowhere = ClientLimits(RATE, f"redis://127.0.0.1:{free_port()}", prefix)
    http = await aiohttp_client(a_gateway(nowhere, None).app())
    await error_of(await http.get("/v1/formats"), 503, "store_error")
    assert (await http.get("/healthz")).status == 200
    await nowhere.close()
