"""The LLM client layer through the running daemon against the fake OpenAI server: the
gateway answers a provider's failure with the right code and a truthful Retry-After, and a
provider's wait longer than the request's deadline fails the request at once."""
from __future__ import annotations

import time

import pytest

from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.daemon_process import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.store]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(FakeConfig()) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, fake):
    d = DaemonProcess(tmp_path_factory.mktemp("llm"), {
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake.url,
        "MEMESYS_LLM_MODEL": "fake-model", "MEMESYS_LLM_MAX_ATTEMPTS": "3"}).start()
    yield d
    assert d.stop() == []


@pytest.fixture(autouse=True)
def healthy(fake):
    fake.config = FakeConfig()
    fake.reset()
    yield
    fake.config = FakeConfig()


def post(daemon: DaemonProcess, topic: str) -> tuple[int, dict, bytes]:
    return daemon.request("POST", "/v1/memes", {"fresh": True, "topic": topic})


def test_a_provider_429_with_a_long_retry_after_is_passed_on_at_once(daemon, fake):
    fake.config.fail_status, fake.config.retry_after_s = 429, 40
    began = time.perf_counter()
    status, headers, body = post(daemon, "rate limited")
    elapsed = time.perf_counter() - began
    assert status == 503, body
    assert b'"llm_rate_limited"' in body
    assert headers["Retry-After"] == "40"
    assert elapsed < 2.0, elapsed  # no wait it could not finish within the deadline
    assert fake.attempts == 1  # the select stage's one attempt: nothing more was sent


def test_a_provider_429_with_a_short_retry_after_is_retried(daemon, fake):
    fake.config.fail_every, fake.config.fail_status, fake.config.retry_after_s = 3, 429, 0.2
    status, _, body = post(daemon, "briefly rate limited")
    assert status == 201, body
    assert fake.failures >= 1 and fake.calls == 6


def test_a_provider_outage_is_llm_unavailable(daemon, fake):
    fake.config.fail_status = 500
    status, headers, body = post(daemon, "outage")
    assert status == 503 and b'"llm_unavailable"' in body and headers["Retry-After"]
    assert fake.attempts == 3  # the select stage's max_attempts, no more


# ---------------------------------------------------------------------- a provider outage

RESET_S = 3.0


@pytest.fixture(scope="module")
def breaker_daemon(tmp_path_factory, fake):
    d = DaemonProcess(tmp_path_factory.mktemp("llm-breaker"), {
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake.url,
        "MEMESYS_LLM_MODEL": "fake-model", "MEMESYS_LLM_MAX_ATTEMPTS": "2",
        "MEMESYS_LLM_TIMEOUT_S": "1.0", "MEMESYS_LLM_BREAKER_FAILURES": "5",
        "MEMESYS_LLM_BREAKER_RESET_S": str(RESET_S)}).start()
    yield d
    assert d.stop() == []


def restarts(daemon: DaemonProcess) -> dict[str, int]:
    import json

    from tests.test_quarantine import restarts as walk
    result = daemon.admin("status", "--json")
    assert result.returncode == 0, result.stderr
    return walk(json.loads(result.stdout))


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_a_provider_outage_fails_fast_and_recovers(breaker_daemon, fake, fault):
    d = breaker_daemon
    status, _, body = post(d, "before the outage")
    assert status == 201, body
    before = restarts(d)

    if fault == "500":
        fake.config.fail_status = 500
    else:
        fake.config.hang_s = 60.0  # past every timeout: each attempt is cut at its deadline
    began = time.monotonic()
    opened_after = None
    fast: list[tuple[float, str]] = []  # (seconds, Retry-After) of the answers once open
    while time.monotonic() - began < 25 and len(fast) < 40:
        sent = fake.attempts
        t0 = time.perf_counter()
        status, headers, body = post(d, "during the outage")
        took = time.perf_counter() - t0
        assert status == 503 and b'"llm_unavailable"' in body, body
        if fake.attempts == sent:  # the request reached no provider: the breaker is open
            opened_after = opened_after or time.monotonic() - began
            fast.append((took, headers["Retry-After"]))
    assert len(fast) >= 20, f"no fail-fast phase: {fast}"
    attempts_while_open = fake.attempts
    post(d, "still out")
    assert fake.attempts == attempts_while_open  # nothing reaches the provider while open
    latencies = sorted(t for t, _ in fast)
    p50 = latencies[len(latencies) // 2]
    assert p50 < 0.020, f"p50 {p50 * 1000:.1f} ms"
    assert all(1 <= int(after) <= RESET_S for _, after in fast), fast

    fake.config = FakeConfig()  # the provider recovers
    recovered = time.monotonic()
    while True:
        status, _, body = post(d, "after the outage")
        if status == 201:
            break
        assert time.monotonic() - recovered < RESET_S + 2.0, body
        time.sleep(0.05)
    assert time.monotonic() - recovered <= RESET_S + 2.0
    assert restarts(d) == before
