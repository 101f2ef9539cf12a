"""The LLM client layer through the running daemon against the fake OpenAI server: the
gateway answers a provider's failure with the right code and a truthful Retry-After, a
provider's wait longer than the request's deadline fails the request at once, and a 30 s
outage under steady load fails fast behind the breaker and recovers."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass

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
    d = DaemonProcess(
        tmp_path_factory.mktemp("llm"),
        {
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": fake.url,
            "MEMESYS_LLM_MODEL": "fake-model",
            "MEMESYS_LLM_MAX_ATTEMPTS": "3",
        },
    ).start()
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
    d = DaemonProcess(
        tmp_path_factory.mktemp("llm-breaker"),
        {
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": fake.url,
            "MEMESYS_LLM_MODEL": "fake-model",
            "MEMESYS_LLM_MAX_ATTEMPTS": "2",
            "MEMESYS_LLM_TIMEOUT_S": "0.5",
            "MEMESYS_LLM_BREAKER_FAILURES": "5",
            "MEMESYS_LLM_BREAKER_RESET_S": str(RESET_S),
        },
    ).start()
    yield d
    assert d.stop() == []


def restarts(daemon: DaemonProcess) -> dict[str, int]:
    import json

    from tests.test_quarantine import restarts as walk

    result = daemon.admin("status", "--json")
    assert result.returncode == 0, result.stderr
    return walk(json.loads(result.stdout))


OUTAGE_S = 30.0
CLIENTS = 4


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    took: float
    status: int
    code: str
    retry_after: str


def steady_load(
    daemon: DaemonProcess, answers: list[Answer], stop: threading.Event, client: int
) -> None:
    """One client posting fresh memes back to back; after a failure it pauses 50 ms, a light
    back-off that keeps the load on (honouring a Retry-After of seconds would not)."""
    n = 0
    while not stop.is_set():
        sent = time.monotonic()
        status, headers, body = post(daemon, f"steady client {client} meme {n}")
        code = "" if status == 201 else json.loads(body)["error"]["code"]
        answers.append(
            Answer(sent, time.monotonic() - sent, status, code, headers.get("Retry-After", ""))
        )
        n += 1
        if status != 201:
            time.sleep(0.05)


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_a_30_s_provider_outage_under_steady_load_fails_fast_and_recovers(
    breaker_daemon, fake, fault
):
    """Four clients post memes back to back; after 3 s the provider fails every call for 30 s
    (500s, or hangs past every timeout), then recovers. Once the breaker is open, answers are
    503 llm_unavailable in under 20 ms (p50) with a Retry-After of at most breaker_reset_s, and
    only the probes, one per breaker_reset_s, reach the provider; within breaker_reset_s + 2 s
    of the recovery memes flow again; no actor restarts and no request hangs."""
    d = breaker_daemon
    before = restarts(d)
    answers: list[Answer] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=steady_load, args=(d, answers, stop, i), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in clients:
        t.start()
    try:
        time.sleep(3.0)
        outage = time.monotonic()
        if fault == "500":
            fake.config.fail_status = 500
        else:
            fake.config.hang_s = 60.0  # past every timeout: each attempt is cut at its deadline
        time.sleep(5.0)  # the breaker opens within the first failed calls
        open_phase, attempts_then = time.monotonic(), fake.attempts
        time.sleep(OUTAGE_S - 5.0)
        attempts_while_open = fake.attempts - attempts_then
        recovered = time.monotonic()
        fake.config = FakeConfig()  # the provider recovers
        while not any(a.status == 201 and a.sent >= recovered for a in answers):
            assert time.monotonic() - recovered < RESET_S + 2.0 + 5.0, "memes do not flow"
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in clients:
            t.join(10.0)
    assert not any(t.is_alive() for t in clients), "a request hangs"

    steady = [a for a in answers if a.sent + a.took < outage]  # answered before it
    assert steady and all(a.status == 201 for a in steady), steady
    during = [a for a in answers if open_phase <= a.sent < recovered]
    assert len(during) >= 100, len(during)
    assert all(a.status == 503 and a.code == "llm_unavailable" for a in during), {
        (a.status, a.code) for a in during
    }
    took = sorted(a.took for a in during)
    assert took[len(took) // 2] < 0.020, f"p50 {took[len(took) // 2] * 1000:.1f} ms"
    assert all(1 <= int(a.retry_after) <= RESET_S for a in during), {a.retry_after for a in during}
    probes = math.ceil((recovered - open_phase) / RESET_S) + 1
    assert attempts_while_open <= probes * 2, (attempts_while_open, probes)  # 2 attempts each
    first = min(a.sent + a.took for a in answers if a.status == 201 and a.sent >= recovered)
    print(
        f"{fault}: {len(during)} answers while open, p50 {took[len(took) // 2] * 1000:.1f} ms, "
        f"{attempts_while_open} attempts reached the provider ({probes} probe periods), "
        f"memes again {first - recovered:.2f} s after the recovery"
    )
    assert first - recovered <= RESET_S + 2.0, first - recovered
    assert max(a.took for a in answers) < 10.0  # nothing waited out a gateway timeout
    assert restarts(d) == before
