"""The rate limit of a provider+model, shared by two processes through one Redis, measured at
the fake server: under heavy load from both, the rate that reaches the server stays within
R + 5 % and no 1-second window holds more than 1.5 R; a call that cannot get a slot before its
deadline fails at once with a Retry-After from the limiter; without Redis each process keeps
to its share; provider 429s lower the limit."""

from __future__ import annotations

import time
import uuid
from bisect import bisect_left
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors import deadlines
from memesys.errors import ErrorCode
from memesys.llm.errors import LLMCallError, failure_of
from memesys.llm.limiter import Limiter, NoSlot
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.llm import calls_in_subprocess, come_back_later, make_engine, write_request
from tests.support.provider import fake_provider_fixture
from tests.support.redis_server import shared_prefix
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.store

REQUEST = write_request()
R = 20
LOAD_S = 10.0


fake = fake_provider_fixture(FakeConfig(latency_s=0.005))


def max_window(arrivals: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window [t, t + width) starting at an arrival."""
    arrivals = sorted(arrivals)
    return max(bisect_left(arrivals, t + width) - i for i, t in enumerate(arrivals))


@pytest.fixture
def fake_process() -> Iterator[str]:
    """The fake in a process of its own: its arrival times are not skewed by the GIL of the
    test's 16 calling threads."""
    import json
    import subprocess
    import sys
    import urllib.request

    from memesys.testing.ports import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memesys.testing.fake_openai",
            "--port",
            str(port),
            "--latency",
            "0.005",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                return bool(urllib.request.urlopen(f"{url}/_fake/stats", timeout=1).read())
            except OSError:
                return False

        wait_for(answers, 10, "the fake provider process to listen", interval=0.05)

        def stats() -> dict:
            with urllib.request.urlopen(f"{url}/_fake/stats?arrivals=1", timeout=5) as r:
                return json.loads(r.read())

        yield f"{url}/v1", stats
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_processes_share_one_limit(fake_process, redis: str) -> None:
    url, stats = fake_process
    knobs = {
        "max_attempts": 1,
        "rate_limit_rps": R,
        "redis_url": redis,
        "processes": 2,
        "key_prefix": shared_prefix(f"t{uuid.uuid4().hex[:6]}"),
        "timeout_s": 5.0,
    }
    engine = make_engine(url, **knobs)
    start_at = time.time() + 3.0  # the subprocess imports DSPy meanwhile
    end_at = start_at + LOAD_S

    def load() -> list[str]:
        out = []
        while time.time() < end_at:
            try:
                with deadlines.serving(time.time() + 0.5):
                    engine.complete(REQUEST)
                out.append("ok")
            except LLMCallError as exc:
                out.append(exc.kind)
                come_back_later(exc)
        return out

    with ThreadPoolExecutor(17) as pool:
        there = pool.submit(
            calls_in_subprocess,
            url,
            200_000,
            knobs,
            threads=16,
            start_at=start_at,
            deadline_s=0.5,
            until=end_at,
        )
        time.sleep(max(0.0, start_at - time.time()))  # both processes start at start_at
        here = [pool.submit(load) for _ in range(16)]
        outcomes = [o for f in here for o in f.result()] + there.result()
    seen = stats()
    arrivals = [t for t in seen["arrivals"] if start_at <= t < end_at + 1.0]
    assert len(arrivals) == seen["attempts"] >= outcomes.count("ok") > 0
    assert outcomes.count("limited") > 0  # the load was well above the limit
    rate = sum(t < end_at for t in arrivals) / LOAD_S  # while the load lasted
    busiest = max_window(arrivals)
    print(
        f"limit {R}/s, two processes x 16 callers: {rate:.2f} req/s at the fake, busiest "
        f"1-s window {busiest}, {outcomes.count('limited')} refused, "
        f"{engine.limiter.fallbacks} fallbacks to the local share here"
    )
    assert rate <= R * 1.05, rate
    assert rate >= R * 0.4, rate  # the limit is used, not starved (a loaded host: 0.4)
    assert busiest <= 1.5 * R, busiest


def test_the_daemon_and_another_process_share_one_limit(fake_process, redis: str, tmp_path) -> None:
    """The issue's case through the running daemon: 8 HTTP clients post memes back to back to
    a daemon while another process's 16 callers use the same provider and model, both on one
    Redis and one limit of R req/s, for 10 s; at the fake the rate stays within R + 5 % and
    no second holds more than 1.5 R."""
    import threading

    from tests.support.daemon import DaemonProcess

    url, stats = fake_process
    daemon = DaemonProcess(
        tmp_path,
        {
            "REDIS_URL": redis,
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": url,
            "MEMESYS_LLM_MODEL": "fake-model",
            "MEMESYS_LLM_RATE_LIMIT_RPS": str(R),
            "MEMESYS_PIPELINE_MAX_REFINE_ROUNDS": "0",
        },
    ).start()
    try:
        knobs = {
            "max_attempts": 1,
            "rate_limit_rps": R,
            "redis_url": redis,
            "processes": 2,
            "key_prefix": daemon.key_prefix,
            "timeout_s": 5.0,
        }
        start_at = time.time() + 3.0  # the subprocess imports DSPy meanwhile
        end_at = start_at + LOAD_S
        statuses: list[int] = []

        def client(i: int) -> None:
            n = 0
            while time.time() < end_at:
                status, _, _ = daemon.request(
                    "POST",
                    "/v1/memes",
                    {"fresh": True, "topic": f"shared limit client {i} meme {n}"},
                    timeout=60,
                )
                statuses.append(status)
                n += 1
                if status != 201:
                    time.sleep(0.2)  # the client's own back-off

        with ThreadPoolExecutor(1) as pool:
            there = pool.submit(
                calls_in_subprocess,
                url,
                200_000,
                knobs,
                threads=16,
                start_at=start_at,
                deadline_s=0.5,
                until=end_at,
            )
            time.sleep(max(0.0, start_at - time.time()))  # both processes start at start_at
            clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for t in clients:
                t.start()
            outcomes = there.result()
            for t in clients:
                t.join(90)
        seen = stats()
    finally:
        assert daemon.stop() == []
    arrivals = [t for t in seen["arrivals"] if start_at <= t < end_at + 1.0]
    rate = sum(t < end_at for t in arrivals) / LOAD_S
    busiest = max_window(arrivals)
    print(
        f"limit {R}/s, the daemon (8 clients: {statuses.count(201)} memes, "
        f"{len(statuses) - statuses.count(201)} refused) and a process of 16 callers "
        f"({outcomes.count('ok')} calls, {outcomes.count('limited')} refused): "
        f"{rate:.2f} req/s at the fake, busiest 1-s window {busiest}"
    )
    assert statuses.count(201) > 0 and outcomes.count("ok") > 0  # both got their turn
    assert outcomes.count("limited") > 0  # the load was well above the limit
    assert rate <= R * 1.05, rate
    assert rate >= R * 0.4, rate
    assert busiest <= 1.5 * R, busiest


def test_no_slot_before_the_deadline_fails_at_once(fake: FakeOpenAI, redis: str) -> None:
    engine = make_engine(
        fake.url,
        max_attempts=1,
        rate_limit_rps=2,
        redis_url=redis,
        key_prefix=shared_prefix(f"t{uuid.uuid4().hex[:6]}"),
    )
    with deadlines.serving(time.time() + 5):
        engine.complete(REQUEST)
        engine.complete(REQUEST)
    began = time.perf_counter()
    with deadlines.serving(time.time() + 0.2), pytest.raises(LLMCallError) as raised:
        engine.complete(REQUEST)
    # Refused at once (well under a millisecond of work): no slot within the 0.2 s deadline;
    # 50 ms, scaled, stays below that deadline.
    assert time.perf_counter() - began < scaled(0.05)
    code, after = failure_of(raised.value)
    assert code is ErrorCode.LLM_RATE_LIMITED and 0.2 < after <= 1.0
    assert fake.attempts == 2
    # with time to wait, it waits for the slot
    with deadlines.serving(time.time() + 2):
        engine.complete(REQUEST)
    assert fake.attempts == 3


def slots_within(limiter: Limiter, seconds: float) -> int:
    """How many slots ``limiter`` grants, one after another, before ``seconds`` from now."""
    taken, deadline = 0, time.time() + seconds
    while True:
        try:
            limiter.acquire(1, deadline, 1)
        except NoSlot:
            return taken
        taken += 1


def test_without_redis_each_process_keeps_to_its_share() -> None:
    limiter = Limiter("x/m", 10, 0, "redis://127.0.0.1:1/0", "t", processes=2)
    began = time.time()
    # 10 / 2 processes: 5 a second after a burst of 2 (never more than half a second's worth)
    assert slots_within(limiter, 0.9) == 6 and limiter.fallbacks == 1
    # Paced over about 0.9 s; 0.6 s (scaled) of margin.
    assert time.time() - began < 0.9 + scaled(0.6)


def test_provider_429s_lower_the_limit_and_it_climbs_back() -> None:
    limiter = Limiter("x/m", 10, 0)
    limiter.provider_limited()
    assert limiter.factor == 1.0  # not within a second of the start
    limiter._changed -= 2
    limiter.provider_limited()
    assert limiter.factor == 0.5
    assert slots_within(limiter, 0.9) == 6  # 5 a second after a burst of 2
    limiter._changed -= 6
    limiter.provider_answered()
    assert limiter.factor == pytest.approx(0.6)


def test_tokens_per_minute(fake: FakeOpenAI) -> None:
    limiter = Limiter("x/m", 0, 1000)
    limiter.acquire(600, None, 0.01)
    with pytest.raises(NoSlot) as raised:
        limiter.acquire(600, None, 0.01)
    assert 59 < raised.value.retry_after <= 60
