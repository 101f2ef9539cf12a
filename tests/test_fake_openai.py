"""The fake OpenAI-compatible endpoint: wire shape, latency, auth, fault injection (latency
distributions, 429s and their headers, storms, hangs, resets, malformed bodies, per-model
faults and counters), its own rate limit, per-model latency, concurrency counts and the
request headers it records, the CLI, and the meme program run end to end against it through
DSPy's native (lm15) HTTP engine."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dspy
import openai
import pytest
from dspy.utils.exceptions import LMError, LMRateLimitError

from memesys.pipeline.lm import OPENAI_COMPATIBLE, build_lm, offline_lm
from memesys.pipeline.writing import write_caption
from memesys.testing.fake_openai import (
    NOT_JSON_BODY,
    SELECT_MESSAGES,
    FakeConfig,
    FakeOpenAI,
    Latency,
    _parse,
    config_from_args,
    duration_text,
    estimated_tokens,
    lognormal_sigma,
)
from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
SELECT_BODY = {
    "model": "fake-model",
    "temperature": 0.0,
    "max_tokens": 1000,
    "messages": list(SELECT_MESSAGES),
}


def fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fake-openai"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """A fake in the test's own loop."""
    async with FakeOpenAI(FakeConfig(), api_key=KEY) as server:
        yield server


@pytest.fixture
def threaded() -> Iterator[FakeOpenAI]:
    """A fake in a daemon thread, for synchronous clients; the thread must be gone after."""
    server = FakeOpenAI(FakeConfig(), api_key=KEY).start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()
        assert not fake_threads(), "a fake-openai thread outlived stop_thread()"


async def post(
    session: aiohttp.ClientSession, fake: FakeOpenAI, body: Any, key: str | None = KEY
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.post(f"{fake.url}/chat/completions", json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def urlopen(
    url: str, body: Any | None = None, key: str = KEY, timeout: float = 5.0
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A raw stdlib request: (status, headers, JSON body), errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def assert_openai_error(payload: dict[str, Any]) -> None:
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]


# ---------------------------------------------------------------------- wire shape


async def test_answers_in_openai_shape(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        status, _, payload = await post(session, fake, SELECT_BODY)
    assert status == 200, payload
    assert payload["object"] == "chat.completion"
    assert payload["id"].startswith("chatcmpl-")
    assert isinstance(payload["created"], int)
    assert payload["model"] == "fake-model"
    (choice,) = payload["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    # The offline writer's ChatAdapter sections for the signature the prompt declares.
    assert content.startswith("[[ ## format_name ## ]]\n")
    assert "[[ ## reason ## ]]" in content and content.endswith("[[ ## completed ## ]]")
    usage = payload["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (fake.calls, fake.calls_by_model, list(fake.requests)) == (
        1,
        {"fake-model": 1},
        [SELECT_BODY],
    )


def test_raw_urllib_post_and_models(threaded: FakeOpenAI) -> None:
    assert threaded.url.startswith("http://127.0.0.1:") and threaded.url.endswith("/v1")
    status, _, payload = urlopen(f"{threaded.url}/chat/completions", SELECT_BODY)
    assert status == 200, payload
    assert payload["choices"][0]["message"]["content"].startswith("[[ ## format_name ## ]]")
    status, _, models = urlopen(f"{threaded.url}/models")
    assert status == 200
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["fake-model"]
    assert threaded.calls == 1


async def test_same_prompt_same_answer(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        answers = [
            (await post(session, fake, SELECT_BODY))[2]["choices"][0]["message"]["content"]
            for _ in range(2)
        ]
    assert answers[0] == answers[1]


async def test_bad_requests_get_openai_errors(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        cases = {
            "no model": {"messages": HELLO["messages"]},
            "no messages": {"model": "fake-model"},
            "empty messages": {"model": "fake-model", "messages": []},
            "stream": {**SELECT_BODY, "stream": True},
            "not an object": [1, 2],
            # Valid OpenAI, but no signature the writer knows: a clear 400, not a crash.
            "unknown prompt": HELLO,
        }
        for case, body in cases.items():
            status, _, payload = await post(session, fake, body)
            assert status == 400, (case, payload)
            assert_openai_error(payload)
        status, _, payload = await post(session, fake, {**SELECT_BODY, "stream": True})
        assert "stream" in payload["error"]["message"]
        async with session.post(
            f"{fake.url}/chat/completions",
            data=b"{not json",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 400
            assert_openai_error(await resp.json())
        async with session.get(f"{fake.url}/nowhere") as resp:
            assert resp.status == 404
            assert_openai_error(await resp.json())
    assert fake.calls == 0


# ---------------------------------------------------------------------- auth


async def test_auth_is_checked(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        for key in (None, "wrong-key"):
            status, _, payload = await post(session, fake, SELECT_BODY, key=key)
            assert status == 401
            assert_openai_error(payload)
            assert payload["error"]["code"] == "invalid_api_key"
        async with session.get(f"{fake.url}/models") as resp:
            assert resp.status == 401
        status, _, _ = await post(session, fake, SELECT_BODY)
        assert status == 200
    assert (fake.calls, fake.attempts) == (1, 3)


# ---------------------------------------------------------------------- latency


async def test_latency_is_applied(fake: FakeOpenAI) -> None:
    fake.config.latency_s = 0.1
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        status, _, _ = await post(session, fake, SELECT_BODY)
        one = time.perf_counter() - began
        assert status == 200 and one >= 0.1

        began = time.perf_counter()
        results = await asyncio.gather(*(post(session, fake, SELECT_BODY) for _ in range(20)))
        many = time.perf_counter() - began
    assert [status for status, _, _ in results] == [200] * 20
    assert 0.1 <= many < 0.5, f"20 concurrent calls took {many:.3f} s: latency does not overlap"
    assert fake.calls == 21


async def test_jitter_is_seeded_and_bounded() -> None:
    def delays(seed: int) -> list[float]:
        server = FakeOpenAI(FakeConfig(latency_s=0.01, jitter_s=0.05, seed=seed))
        return [server.next_delay() for _ in range(5)]

    assert delays(1) == delays(1) != delays(2)
    assert all(0.01 <= d < 0.06 for d in delays(1))
    async with FakeOpenAI(FakeConfig(latency_s=0.01, jitter_s=0.05, seed=1)) as server:
        async with aiohttp.ClientSession() as session:
            began = time.perf_counter()
            status, _, _ = await post(session, server, SELECT_BODY)
            elapsed = time.perf_counter() - began
    # The configured delay (up to 0.06 s), plus 0.2 s (scaled) for the round trip.
    assert status == 200 and delays(1)[0] <= elapsed < 0.06 + scaled(0.2)


# ---------------------------------------------------------------------- faults


async def test_fail_status_429_with_retry_after(fake: FakeOpenAI) -> None:
    fake.config.fail_status, fake.config.retry_after_s = 429, 2
    async with aiohttp.ClientSession() as session:
        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 429
        assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "2000"
        assert_openai_error(payload)
        assert payload["error"]["code"] == "rate_limit_exceeded"
        fake.config.fail_status = None  # faults follow the config while it runs
        status, _, _ = await post(session, fake, SELECT_BODY)
        assert status == 200
    assert (fake.calls, fake.failures, fake.attempts) == (1, 1, 2)


async def test_fail_status_500_and_fail_every(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        fake.config.fail_status = 500
        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 500 and "Retry-After" not in headers
        assert payload["error"]["type"] == "server_error"

        fake.config.fail_status, fake.config.fail_every = None, 3
        fake.reset()
        statuses = [(await post(session, fake, SELECT_BODY))[0] for _ in range(7)]
        assert statuses == [200, 200, 500, 200, 200, 500, 200]

        fake.config.fail_status = 429  # both set: that status, 1 call in N
        fake.reset()
        statuses = [(await post(session, fake, SELECT_BODY))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
    assert (fake.calls, fake.failures) == (2, 1)


def test_hang_trips_the_client_timeout(threaded: FakeOpenAI) -> None:
    threaded.config.hang_s = 2.0
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=0.3)
    began = time.perf_counter()
    with pytest.raises(LMError):
        with dspy.context(lm=handle.lm):
            handle.lm("hi")
    # An error at once (milliseconds), not a retry loop or a timeout; 1.5 s, scaled.
    assert time.perf_counter() - began < scaled(1.5)
    assert threaded.calls == 0
    # stop_thread (in the fixture) must not wait out the hang: it cancels in-flight requests.


# ---------------------------------------------------------------------- faults (issue 8)


def body_for(model: str) -> dict[str, Any]:
    return {**SELECT_BODY, "model": model}


def test_latency_distributions_are_seeded_and_shaped() -> None:
    def draws(dist: str, seed: int = 7, n: int = 2000, **kw: Any) -> list[float]:
        server = FakeOpenAI(FakeConfig(latency_s=0.1, latency_dist=dist, seed=seed, **kw))
        return [server.next_delay() for _ in range(n)]

    assert set(draws("fixed", n=5)) == {0.1}
    for dist in ("uniform", "exponential", "lognormal"):
        assert draws(dist, n=20) == draws(dist, n=20) != draws(dist, seed=8, n=20), dist
    uniform = draws("uniform")
    assert all(0 <= d < 0.2 for d in uniform) and abs(sum(uniform) / len(uniform) - 0.1) < 0.01
    exponential = draws("exponential")
    assert abs(sum(exponential) / len(exponential) - 0.1) < 0.01
    assert max(exponential) > 0.4  # a long tail
    lognormal = sorted(draws("lognormal", latency_sigma=1.0))
    assert abs(lognormal[len(lognormal) // 2] - 0.1) < 0.01  # the median is latency_s
    capped = draws("exponential", latency_max_s=0.15)
    assert max(capped) == 0.15
    jittered = draws("exponential", jitter_s=0.05, n=50)
    assert jittered != draws("exponential", n=50)
    with pytest.raises(ValueError, match="latency_dist"):
        FakeConfig(latency_dist="gaussian")
    with pytest.raises(ValueError, match="fail_kind"):
        FakeConfig(fail_kind="explode")


async def test_latency_distribution_over_http() -> None:
    config = FakeConfig(latency_s=0.05, latency_dist="exponential", latency_max_s=0.3, seed=3)
    expected = FakeOpenAI(FakeConfig(**vars(config)))  # the same seed: the same draws
    async with FakeOpenAI(config, api_key=KEY) as server:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                delay = expected.next_delay()
                began = time.perf_counter()
                status, _, _ = await post(session, server, SELECT_BODY)
                elapsed = time.perf_counter() - began
                assert status == 200 and delay <= elapsed < delay + 0.2, (delay, elapsed)


async def test_429_and_503_carry_retry_after_headers(fake: FakeOpenAI) -> None:
    fake.config.fail_status, fake.config.retry_after_s = 429, 0.25
    async with aiohttp.ClientSession() as session:
        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 429 and payload["error"]["code"] == "rate_limit_exceeded"
        assert headers["Retry-After"] == "0.25" and headers["retry-after-ms"] == "250"
        fake.config.retry_after_headers = "seconds"
        _, headers, _ = await post(session, fake, SELECT_BODY)
        assert headers["Retry-After"] == "0.25" and "retry-after-ms" not in headers
        fake.config.retry_after_headers, fake.config.retry_after_s = "ms", 30
        _, headers, _ = await post(session, fake, SELECT_BODY)
        assert headers["retry-after-ms"] == "30000" and "Retry-After" not in headers
        fake.config.retry_after_headers = "both"
        fake.config.fail_status = 503  # an overloaded provider says when to come back too
        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 503 and payload["error"]["type"] == "server_error"
        assert headers["Retry-After"] == "30" and headers["retry-after-ms"] == "30000"
        fake.config.fail_status = 500
        status, headers, _ = await post(session, fake, SELECT_BODY)
        assert status == 500 and "Retry-After" not in headers
    assert (fake.attempts, fake.failures, fake.calls) == (5, 5, 0)


def test_storm_window_is_half_open() -> None:
    config = FakeConfig(storm_start=100.0, storm_end=130.0)
    assert [config.storming(t) for t in (99.9, 100.0, 129.9, 130.0)] == [False, True, True, False]
    assert FakeConfig(storm_start=100.0).storming(1e12)  # no end: until cleared
    assert not FakeConfig().storming()


async def test_storm_fails_every_call_for_a_period(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        fake.storm(0.4, after_s=0.2)
        statuses = [(await post(session, fake, SELECT_BODY))[0]]
        await asyncio.sleep(0.25)  # the scenario: into the storm's window
        statuses += [(await post(session, fake, SELECT_BODY))[0] for _ in range(3)]
        await asyncio.sleep(0.5)  # and past its end
        statuses.append((await post(session, fake, SELECT_BODY))[0])
        assert statuses == [200, 500, 500, 500, 200]
        assert (fake.calls, fake.failures) == (2, 3)

        # Between two given times, with another status and its Retry-After.
        now = time.time()
        fake.config.storm_start, fake.config.storm_end = now - 1, now + 60
        fake.config.storm_status, fake.config.retry_after_s = 503, 5
        status, headers, _ = await post(session, fake, SELECT_BODY)
        assert status == 503 and headers["Retry-After"] == "5"
        fake.calm()
        assert (await post(session, fake, SELECT_BODY))[0] == 200


async def test_hang_past_the_timeout_only_for_one_model(fake: FakeOpenAI) -> None:
    fake.config.fail_kind, fake.config.fail_hang_s = "hang", 2.0
    fake.config.fail_model = "primary"
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(
                f"{fake.url}/chat/completions",
                json=body_for("primary"),
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=aiohttp.ClientTimeout(total=0.3),
            ):
                pass
        # Cut at the client's 0.3 s timeout; 0.7 s (scaled) of margin.
        assert 0.3 <= time.perf_counter() - began < 0.3 + scaled(0.7)
        began = time.perf_counter()
        status, _, payload = await post(session, fake, body_for("fallback"))
        assert status == 200 and payload["model"] == "fallback"
        # The fallback answers at once (milliseconds), not after the hang; 0.3 s, scaled.
        assert time.perf_counter() - began < scaled(0.3)
    assert fake.attempts_by_model == {"primary": 1, "fallback": 1}
    assert fake.failures_by_model == {"primary": 1}
    assert fake.calls_by_model == {"fallback": 1}


async def test_hang_answers_late(fake: FakeOpenAI) -> None:
    fake.config.fail_kind, fake.config.fail_hang_s = "hang", 0.2
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        status, _, payload = await post(session, fake, SELECT_BODY)
    assert status == 200 and payload["choices"] and time.perf_counter() - began >= 0.2
    assert (fake.failures, fake.calls) == (1, 1)


async def test_connection_reset(fake: FakeOpenAI) -> None:
    fake.config.fail_kind, fake.config.fail_every = "reset", 2
    async with aiohttp.ClientSession() as session:
        assert (await post(session, fake, SELECT_BODY))[0] == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, fake, SELECT_BODY)
        assert (await post(session, fake, SELECT_BODY))[0] == 200  # the server lives on
    assert (fake.attempts, fake.failures, fake.calls) == (3, 1, 2)


def test_connection_reset_seen_by_a_blocking_client(threaded: FakeOpenAI) -> None:
    threaded.config.fail_kind = "reset"
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        urlopen(f"{threaded.url}/chat/completions", SELECT_BODY)
    assert (threaded.attempts, threaded.failures, threaded.calls) == (1, 1, 0)


async def test_malformed_bodies(fake: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        fake.config.fail_kind = "not_json"
        async with session.post(
            f"{fake.url}/chat/completions", json=SELECT_BODY, headers=headers
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            raw = await resp.read()
        assert raw == NOT_JSON_BODY
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)

        fake.config.fail_kind = "no_choices"
        status, _, payload = await post(session, fake, SELECT_BODY)
        assert status == 200 and payload["object"] == "chat.completion"
        assert "choices" not in payload and payload["model"] == "fake-model"

        fake.config.fail_kind = "status"  # back to normal (no fail_status)
        assert (await post(session, fake, SELECT_BODY))[0] == 200
    assert (fake.attempts, fake.failures, fake.calls) == (3, 2, 1)


async def test_per_model_faults_and_counters(fake: FakeOpenAI) -> None:
    """The primary fails, the fallback serves; attempts per model include every failure."""
    fake.config.fail_status, fake.config.fail_model = 500, "primary"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # a caller making 3 attempts on the primary, then one fallback
            assert (await post(session, fake, body_for("primary")))[0] == 500
        assert (await post(session, fake, body_for("fallback")))[0] == 200
        # A storm targets the same model only.
        fake.config.fail_status = None
        fake.storm(None, status=503)
        assert (await post(session, fake, body_for("primary")))[0] == 503
        assert (await post(session, fake, body_for("fallback")))[0] == 200
        fake.calm()
        assert (await post(session, fake, body_for("primary")))[0] == 200
        # fail_model and fail_matching together: both must match.
        fake.config.fail_status, fake.config.fail_matching = 500, "no such text"
        assert (await post(session, fake, body_for("primary")))[0] == 200
        # Refused requests count as attempts too (no key; a bad body is counted under "").
        assert (await post(session, fake, body_for("primary"), key="wrong"))[0] == 401
        async with session.post(
            f"{fake.url}/chat/completions",
            data=b"{not json",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 400
    assert fake.attempts_by_model == {"primary": 7, "fallback": 2, "": 1}
    assert fake.failures_by_model == {"primary": 4}
    assert fake.calls_by_model == {"fallback": 2, "primary": 2}
    assert fake.attempts == sum(fake.attempts_by_model.values()) == 10
    fake.reset()
    assert not (fake.attempts_by_model or fake.failures_by_model or fake.calls_by_model)


def test_stats_endpoint_for_other_processes(threaded: FakeOpenAI) -> None:
    threaded.config.fail_status, threaded.config.fail_model = 429, "primary"
    began = time.time()
    assert urlopen(f"{threaded.url}/chat/completions", body_for("primary"))[0] == 429
    assert urlopen(f"{threaded.url}/chat/completions", body_for("fallback"))[0] == 200
    base = threaded.url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/_fake/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    assert stats == {
        "attempts": 2,
        "calls": 1,
        "failures": 1,
        "rate_limited": 0,
        "in_flight": 0,
        "peak_in_flight": 1,
        "attempts_by_model": {"primary": 1, "fallback": 1},
        "calls_by_model": {"fallback": 1},
        "failures_by_model": {"primary": 1},
        "rate_limited_by_model": {},
        "in_flight_by_model": {},
        "peak_in_flight_by_model": {"primary": 1, "fallback": 1},
        "user_agents": {f"Python-urllib/{sys.version_info.major}.{sys.version_info.minor}": 2},
    }
    with urllib.request.urlopen(f"{base}/_fake/stats?arrivals=1", timeout=5) as resp:
        arrivals = json.loads(resp.read())["arrivals"]
    assert len(arrivals) == 2 and began <= arrivals[0] <= arrivals[1] <= time.time()
    threaded.reset()
    assert threaded.stats(arrivals=True)["arrivals"] == []


# ---------------------------------------------------------------------- issue 16: a real provider's
# latency per model, its own rate limit, concurrency, the client's headers


def test_lognormal_by_median_and_p95() -> None:
    latency = Latency.lognormal(0.72, 4.1)
    assert latency.dist == "lognormal" and latency.seconds == 0.72
    assert latency.sigma == pytest.approx((math.log(4.1) - math.log(0.72)) / 1.6449)
    rng = random.Random(11)
    draws = sorted(latency.draw(rng) for _ in range(20_000))
    median, p95 = draws[len(draws) // 2], draws[int(len(draws) * 0.95)]
    assert median == pytest.approx(0.72, rel=0.04)
    assert p95 == pytest.approx(4.1, rel=0.06)
    assert [latency.draw(random.Random(3)) for _ in range(2)] == [
        latency.draw(random.Random(3)) for _ in range(2)
    ]
    assert Latency.parse("0.25") == Latency(0.25)
    assert Latency.parse("0.72:4.1") == latency
    with pytest.raises(ValueError, match="median <= p95"):
        lognormal_sigma(2.0, 1.0)
    with pytest.raises(ValueError, match="latency_dist"):
        Latency(0.1, "gaussian")


async def test_latency_per_model_over_http() -> None:
    config = FakeConfig(latency_by_model={"slow": Latency(0.3)})
    async with FakeOpenAI(config, api_key=KEY) as server:
        async with aiohttp.ClientSession() as session:
            began = time.perf_counter()
            status, _, _ = await post(session, server, body_for("slow"))
            slow = time.perf_counter() - began
            began = time.perf_counter()
            status_fast, _, _ = await post(session, server, body_for("fast"))
            fast = time.perf_counter() - began
    assert status == status_fast == 200
    # The slow model's 0.3 s; the other model the default (none), 0.2 s of margin (scaled).
    assert 0.3 <= slow < 0.3 + scaled(0.2) and fast < scaled(0.2)
    assert config.latency("fast") == Latency() and config.latency("slow") == Latency(0.3)


async def test_rate_limit_answers_429_with_headers_and_recovers(fake: FakeOpenAI) -> None:
    window = scaled(1.0)  # the 4th request must come within it
    fake.config.limit_requests, fake.config.limit_window_s = 3, window
    async with aiohttp.ClientSession() as session:
        remaining = []
        for _ in range(3):
            status, headers, _ = await post(session, fake, SELECT_BODY)
            assert status == 200 and headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-reset-requests"].endswith("s")
            remaining.append(headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        assert "x-ratelimit-limit-tokens" not in headers  # no token limit set

        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 429
        assert_openai_error(payload)
        assert payload["error"]["code"] == "rate_limit_exceeded"
        assert payload["error"]["type"] == "requests"
        wait_ms = int(headers["retry-after-ms"])
        assert 0 < wait_ms <= window * 1000
        # Whole seconds, rounded up (at least 1).
        assert headers["Retry-After"] == str(max(1, math.ceil(wait_ms / 1000)))
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"

        await asyncio.sleep(wait_ms / 1000 + 0.02)  # honouring retry-after-ms is enough
        status, headers, _ = await post(session, fake, SELECT_BODY)
        assert status == 200 and headers["x-ratelimit-remaining-requests"] in ("0", "1", "2")
        await asyncio.sleep(window + 0.05)  # a whole window later: the limit is back to full
        status, headers, _ = await post(session, fake, SELECT_BODY)
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "2"
    assert (fake.attempts, fake.calls, fake.rate_limited) == (6, 5, 1)
    assert fake.rate_limited_by_model == {"fake-model": 1}
    assert fake.stats()["rate_limited"] == 1


async def test_token_limit(fake: FakeOpenAI) -> None:
    cost = estimated_tokens(SELECT_BODY)
    assert cost == math.ceil(sum(len(m["content"]) for m in SELECT_MESSAGES) / 4) + 1000
    fake.config.limit_tokens = 2 * cost + 1
    async with aiohttp.ClientSession() as session:
        for left in (cost + 1, 1):
            status, headers, _ = await post(session, fake, SELECT_BODY)
            assert status == 200
            assert headers["x-ratelimit-limit-tokens"] == str(2 * cost + 1)
            assert headers["x-ratelimit-remaining-tokens"] == str(left)
        assert "x-ratelimit-limit-requests" not in headers
        status, headers, payload = await post(session, fake, SELECT_BODY)
        assert status == 429 and payload["error"]["type"] == "tokens"
        assert "tokens per min" in payload["error"]["message"]
        # The first request leaves the minute's window in about 60 s.
        assert 59_000 < int(headers["retry-after-ms"]) <= 60_000
        assert headers["x-ratelimit-reset-tokens"].endswith("s")
        fake.reset()  # empties the windows too
        assert (await post(session, fake, SELECT_BODY))[0] == 200


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0.0, 0.1204, 1.0, 17.3256, 360.0, 61.5)] == [
        "0ms",
        "121ms",
        "1s",
        "17.326s",
        "6m0s",
        "1m1.5s",
    ]


async def test_concurrent_calls_are_counted(fake: FakeOpenAI) -> None:
    fake.config.latency_s = scaled(1.0)  # long enough for the seven to be in flight together
    async with aiohttp.ClientSession() as session:
        calls = [post(session, fake, body_for("a")) for _ in range(5)]
        calls += [post(session, fake, body_for("b")) for _ in range(2)]
        running = asyncio.gather(*calls)
        for _ in range(int(fake.config.latency_s * 100)):  # until all seven have arrived
            await asyncio.sleep(0.01)
            if fake.in_flight == 7:
                break
        during = fake.stats()
        results = await running
        base = fake.url.removesuffix("/v1")
        async with session.get(f"{base}/_fake/stats") as resp:
            after = await resp.json()
    assert [status for status, _, _ in results] == [200] * 7
    assert (during["in_flight"], during["in_flight_by_model"]) == (7, {"a": 5, "b": 2})
    assert (after["in_flight"], after["in_flight_by_model"]) == (0, {})
    assert (after["peak_in_flight"], after["peak_in_flight_by_model"]) == (7, {"a": 5, "b": 2})
    fake.reset()
    assert (fake.peak_in_flight, fake.stats()["peak_in_flight_by_model"]) == (0, {})


async def test_request_headers_record_the_client(fake: FakeOpenAI) -> None:
    """The openai SDK's User-Agent and X-Stainless-* headers are recorded: a test can tell
    which client called; the SDK reads the limit's 429 as a RateLimitError with its headers."""
    fake.config.limit_requests, fake.config.limit_window_s = 1, 30.0
    client = openai.AsyncOpenAI(base_url=fake.url, api_key=KEY, max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model="fake-model", messages=list(SELECT_MESSAGES)
        )
        assert completion.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="fake-model", messages=list(SELECT_MESSAGES))
        assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert raised.value.response.headers["retry-after"] == "30"
    finally:
        await client.close()
    async with aiohttp.ClientSession(headers={"User-Agent": "memesys-test/1"}) as session:
        assert (await post(session, fake, SELECT_BODY))[0] == 429
        async with session.get(f"{fake.url.removesuffix('/v1')}/_fake/stats?headers=1") as resp:
            stats = await resp.json()
    sdk = stats["request_headers"][0]
    assert sdk["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert sdk["x-stainless-lang"] == "python"
    assert sdk["x-stainless-package-version"] == openai.__version__
    assert sdk["x-stainless-retry-count"] == "0"
    assert "authorization" not in sdk
    assert stats["request_headers"][2] == {"user-agent": "memesys-test/1"}
    assert stats["user_agents"] == {sdk["user-agent"]: 2, "memesys-test/1": 1}
    assert list(fake.request_headers) == stats["request_headers"]


def test_cli_options_map_to_the_config() -> None:
    args = _parse(
        [
            "--latency",
            "0.1",
            "--latency-dist",
            "lognormal",
            "--latency-sigma",
            "0.8",
            "--latency-max",
            "2",
            "--fail-kind",
            "reset",
            "--fail-every",
            "4",
            "--fail-model",
            "primary",
            "--fail-hang",
            "9",
            "--retry-after",
            "3",
            "--retry-after-headers",
            "ms",
            "--storm-status",
            "503",
        ]
    )
    config = config_from_args(args)
    assert (config.latency_dist, config.latency_sigma, config.latency_max_s) == (
        "lognormal",
        0.8,
        2.0,
    )
    assert (config.fail_kind, config.fail_every, config.fail_model, config.fail_hang_s) == (
        "reset",
        4,
        "primary",
        9.0,
    )
    assert (config.retry_after_s, config.retry_after_headers, config.storm_status) == (
        3.0,
        "ms",
        503,
    )
    assert config.storm_start is None  # the storm is set relative to the server's start
    with pytest.raises(SystemExit):
        _parse(["--fail-kind", "explode"])


def test_cli_latency_and_rate_limit_options() -> None:
    args = _parse(
        [
            "--latency-median",
            "0.72",
            "--latency-p95",
            "4.1",
            "--seed",
            "3",
            "--model-latency",
            "slow=0.2",
            "--model-latency",
            "tail=0.5:2",
            "--rps",
            "10",
            "--tpm",
            "50000",
        ]
    )
    config = config_from_args(args)
    assert config.latency() == Latency.lognormal(0.72, 4.1) and config.seed == 3
    assert config.latency_by_model == {"slow": Latency(0.2), "tail": Latency.lognormal(0.5, 2)}
    assert config.latency("tail") == Latency.lognormal(0.5, 2)
    assert (config.limit_requests, config.limit_window_s, config.limit_tokens) == (10, 1.0, 50000)
    config = config_from_args(_parse(["--rpm", "600"]))
    assert (config.limit_requests, config.limit_window_s, config.limit_tokens) == (600, 60.0, 0)
    assert config_from_args(_parse([])).limit_requests == 0
    for bad in (
        ["--rps", "10", "--rpm", "600"],
        ["--latency-median", "0.7"],
        ["--latency-median", "2", "--latency-p95", "1"],
        ["--model-latency", "slow"],
        ["--model-latency", "slow=fast"],
    ):
        with pytest.raises(SystemExit):
            _parse(bad)


def test_cli_storm_for_one_model() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memesys.testing.fake_openai",
            "--storm-after",
            "0",
            "--storm-for",
            "60",
            "--storm-status",
            "503",
            "--retry-after",
            "2",
            "--retry-after-headers",
            "seconds",
            "--fail-model",
            "primary",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("fake-openai ready at "), (
            line,
            process.stderr.read() if process.poll() is not None else "",
        )
        url = line.removeprefix("fake-openai ready at ")
        status, headers, _ = urlopen(f"{url}/chat/completions", body_for("primary"))
        assert status == 503 and headers["Retry-After"] == "2"
        assert "retry-after-ms" not in headers
        status, _, payload = urlopen(f"{url}/chat/completions", body_for("fallback"))
        assert status == 200 and payload["model"] == "fallback"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "stopped after 1 completions" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------- through DSPy


def test_meme_program_end_to_end(threaded: FakeOpenAI) -> None:
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    assert handle.provider == OPENAI_COMPATIBLE
    offline = offline_lm()

    caption = asyncio.run(write_caption(handle, "cats"))
    # Two stages (SelectFormat, then WriteCaption): exactly two requests reached the fake.
    assert threaded.calls == 2 == len(threaded.requests)
    assert threaded.calls_by_model == {"fake-model": 2}
    outputs = [body["messages"][0]["content"] for body in threaded.requests]
    assert "`format_name`" in outputs[0] and "`captions`" in outputs[1]
    # The same text the offline engine writes, having crossed HTTP and the OpenAI wire.
    expected = asyncio.run(write_caption(offline, "cats"))
    assert (caption.format, caption.texts, caption.reason) == (
        expected.format,
        expected.texts,
        expected.reason,
    )
    assert caption.tokens > 0

    # A named format skips SelectFormat: one stage, one request.
    threaded.reset()
    caption = asyncio.run(write_caption(handle, "cats", format="drake", style="smug", seed=3))
    assert caption.format == "drake" and len(caption.texts) == 2
    assert threaded.calls == 1


def test_concurrent_dspy_calls_overlap(threaded: FakeOpenAI) -> None:
    """Threads calling through DSPy see the latency once, not once per call in sequence."""
    threaded.config.latency_s = 0.1
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    results: list[Any] = []

    def run(seed: int) -> None:
        results.append(asyncio.run(write_caption(handle, "cats", format="drake", seed=seed)))

    workers = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    assert len(results) == 8 and threaded.calls == 8
    # Concurrent: about one call's latency (0.1 s) in all, one after another 0.8 s; 0.6 s,
    # scaled.
    assert elapsed < scaled(0.6), f"8 concurrent DSPy calls took {elapsed:.3f} s"


def test_dspy_sees_a_429_once_with_its_retry_after(threaded: FakeOpenAI) -> None:
    """One attempt, no retry (the daemon owns retries), and Retry-After reaches the caller."""
    threaded.config.fail_status, threaded.config.retry_after_s = 429, 1.5
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    with pytest.raises(LMRateLimitError) as raised:
        asyncio.run(write_caption(handle, "cats", format="drake"))
    assert raised.value.status == 429 and raised.value.retry_after == 1.5
    assert (threaded.attempts, threaded.failures, threaded.calls) == (1, 1, 0)


def test_json_adapter_end_to_end(threaded: FakeOpenAI) -> None:
    """The writer answers JSON when the JSONAdapter asks for it, over the wire too."""
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    with dspy.context(adapter=dspy.JSONAdapter()):
        caption = asyncio.run(write_caption(handle, "cats"))
    expected = asyncio.run(write_caption(offline_lm(), "cats"))
    assert (caption.format, caption.texts) == (expected.format, expected.texts)
    assert threaded.calls == 2


# ---------------------------------------------------------------------- lifecycle and CLI


def test_context_manager_thread_leaves_nothing() -> None:
    with FakeOpenAI() as server:
        assert fake_threads()
        url = server.url
        status, _, _ = urlopen(f"{url}/chat/completions", SELECT_BODY)
        assert status == 200
    assert not fake_threads()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/models", timeout=1)


def test_cli_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "memesys.testing.fake_openai", "--port", "0", "--latency", "0.05"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("fake-openai ready at http://127.0.0.1:"), (
            line,
            process.stderr.read() if process.poll() is not None else "",
        )
        url = line.removeprefix("fake-openai ready at ")
        assert url.endswith("/v1")
        began = time.perf_counter()
        status, _, payload = urlopen(f"{url}/chat/completions", SELECT_BODY)
        assert status == 200 and time.perf_counter() - began >= 0.05
        assert payload["choices"][0]["message"]["content"].startswith("[[ ## format_name")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "stopped after 1 completions" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
