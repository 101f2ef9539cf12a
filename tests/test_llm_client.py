"""The LLM client layer (memesys.llm) with real HTTP against the fake OpenAI server: one retry
layer, attempts bounded by max_attempts and the deadline, Retry-After honoured and passed on,
hangs cut at the deadline, malformed answers an error; and through DSPy, the codes the gateway
answers."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from actors import deadlines
from memesys.errors import ErrorCode
from memesys.llm import client
from memesys.llm.errors import LLMCallError, failure_of
from memesys.llm.transport import HardenedTransport, Policy, retry_after_of
from memesys.pipeline.lm import build_lm
from memesys.pipeline.writing import write_caption
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.llm import make_engine, write_request
from tests.support.provider import KEY, MODEL
from tests.support.timing import scaled, wait_for

REQUEST = write_request()


def engine(fake: FakeOpenAI, **policy: float) -> HardenedTransport:
    return make_engine(fake.url, **policy)


def test_a_call_answers_over_pooled_http(fake: FakeOpenAI) -> None:
    eng = engine(fake)
    for _ in range(5):
        response = eng.complete(REQUEST)
        assert response.text
    assert fake.attempts == fake.calls == 5


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_attempts_never_above_max_attempts(fake: FakeOpenAI, max_attempts: int) -> None:
    fake.config.fail_status = 500
    with pytest.raises(LLMCallError) as raised:
        engine(fake, max_attempts=max_attempts).complete(REQUEST)
    assert fake.attempts == max_attempts == raised.value.attempts
    assert failure_of(raised.value)[0] is ErrorCode.LLM_UNAVAILABLE


def test_a_retry_succeeds_after_a_5xx(fake: FakeOpenAI) -> None:
    fake.config.fail_every, fake.config.fail_status = 2, 500  # the 2nd call fails
    eng = engine(fake)
    eng.complete(REQUEST)
    eng.complete(REQUEST)  # attempt 2 fails, attempt 3 answers
    assert (fake.attempts, fake.failures, fake.calls) == (3, 1, 2)


def test_a_4xx_of_ours_is_not_retried(fake: FakeOpenAI) -> None:
    eng = HardenedTransport(MODEL, "wrong-key", fake.url, Policy(max_attempts=3))
    with pytest.raises(LLMCallError) as raised:
        eng.complete(REQUEST)
    assert raised.value.status == 401 and raised.value.attempts == 1
    assert fake.attempts == 1


def test_retry_after_is_honoured(fake: FakeOpenAI) -> None:
    fake.config.fail_every, fake.config.fail_status, fake.config.retry_after_s = 1, 429, 0.4
    eng = engine(fake, max_attempts=2)
    began = time.perf_counter()
    with pytest.raises(LLMCallError) as raised:
        eng.complete(REQUEST)
    elapsed = time.perf_counter() - began
    assert fake.attempts == 2
    # Waited the provider's 0.4 s, not the 0.01 s backoff; 0.6 s (scaled) of margin, below the
    # next retry's wait.
    assert 0.4 <= elapsed < 0.4 + scaled(0.6), elapsed
    assert failure_of(raised.value) == (ErrorCode.LLM_RATE_LIMITED, 0.4)


def test_a_wait_past_the_deadline_fails_at_once_and_passes_retry_after_on(fake: FakeOpenAI) -> None:
    fake.config.fail_status, fake.config.retry_after_s = 429, 30
    eng = engine(fake)
    began = time.perf_counter()
    with deadlines.serving(time.time() + 2.0), pytest.raises(LLMCallError) as raised:
        eng.complete(REQUEST)
    # Given up at once (milliseconds): the wait asked for is past the 2 s deadline; 0.5 s, scaled.
    assert time.perf_counter() - began < scaled(0.5)
    assert fake.attempts == 1
    assert failure_of(raised.value) == (ErrorCode.LLM_RATE_LIMITED, 30)


def test_a_hang_is_cut_at_the_deadline(fake: FakeOpenAI) -> None:
    fake.config.hang_s = 10.0
    eng = engine(fake, timeout_s=20.0)
    began = time.perf_counter()
    with deadlines.serving(time.time() + 0.5), pytest.raises(LLMCallError) as raised:
        eng.complete(REQUEST)
    elapsed = time.perf_counter() - began
    # Cut at the 0.5 s deadline (0.45 s: its start was taken a moment before); 0.3 s (scaled)
    # of margin.
    assert 0.45 <= elapsed < 0.5 + scaled(0.3), elapsed
    assert raised.value.kind in ("timeout", "deadline")
    assert fake.calls == 0 and fake.attempts >= 1


def test_each_attempt_is_bounded_by_the_call_timeout(fake: FakeOpenAI) -> None:
    fake.config.hang_s = 10.0
    began = time.perf_counter()
    with pytest.raises(LLMCallError):
        engine(fake, timeout_s=0.2, max_attempts=2).complete(REQUEST)
    # Two attempts cut at their 0.2 s timeout (0.4 s), not the 10 s hang; 0.4 s (scaled) margin.
    assert time.perf_counter() - began < 0.4 + scaled(0.4)
    assert fake.attempts == 2


def test_malformed_json_is_an_error_not_a_crash(fake: FakeOpenAI) -> None:
    if "fail_kind" not in FakeConfig.__dataclass_fields__:
        pytest.skip("the fake cannot answer malformed JSON yet")
    fake.config.fail_kind = "not_json"
    with pytest.raises(LLMCallError) as raised:
        engine(fake, max_attempts=2).complete(REQUEST)
    assert raised.value.kind == "malformed" and fake.attempts == 2
    fake.reset()
    fake.config.fail_kind = "no_choices"
    with pytest.raises(LLMCallError) as raised:
        engine(fake, max_attempts=1).complete(REQUEST)
    assert raised.value.kind == "malformed"


def test_an_oversized_answer_is_malformed_and_its_connection_not_reused(fake: FakeOpenAI) -> None:
    """An answer past MAX_ANSWER_BYTES is not read into memory: the attempt fails (malformed)
    and its half-read connection is closed, so the next call gets a clean answer."""
    fake.config.fail_kind, fake.config.fail_every = "oversized", 1
    with pytest.raises(LLMCallError) as raised:
        engine(fake, max_attempts=1).complete(REQUEST)
    assert raised.value.kind == "malformed"
    assert "bytes" in str(raised.value)
    fake.config.fail_every = 0
    fake.config.fail_kind = "status"
    assert engine(fake, max_attempts=1).complete(REQUEST).text


def test_connections_are_bounded_and_the_wait_counts_against_the_timeout(fake: FakeOpenAI) -> None:
    """max_connections=1: a second call at once waits for the one connection; when the first
    holds it past the second's timeout, the second fails as a timeout without sending."""
    fake.config.latency_s = 0.4
    slow = engine(fake, max_attempts=1, max_connections=1, timeout_s=2.0)
    waiting = engine(fake, max_attempts=1, max_connections=1, timeout_s=0.15)
    first = threading.Thread(target=slow.complete, args=(REQUEST,))
    first.start()
    wait_for(lambda: fake.attempts == 1, 5, "the first call to hold the connection")
    began = time.monotonic()
    with pytest.raises(LLMCallError) as raised:
        waiting.complete(REQUEST)
    elapsed = time.monotonic() - began  # before the join: the first call's end is not its own
    first.join(5)
    assert raised.value.kind == "timeout"
    # Cut at its 0.15 s timeout, not after the first's answer (0.4 s and more); 0.2 s (scaled)
    # for the call's own work.
    assert elapsed < 0.15 + scaled(0.2), elapsed
    assert fake.calls == 1  # the waiting call never reached the server


def test_retry_after_headers() -> None:
    from httpx2 import Headers  # what the SDK hands the transport

    assert retry_after_of(Headers({"Retry-After-Ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after_of(Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_of(Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_after_of(Headers({})) is None
    # OpenAI's x-ratelimit-* headers, for a limit they say is spent: its reset
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "850ms"}
    assert retry_after_of(Headers(spent)) == pytest.approx(0.85)
    spent |= {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_of(Headers(spent)) == 360.0
    left = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1.5s"}
    assert retry_after_of(Headers(left)) is None
    assert retry_after_of(Headers({**spent, "Retry-After": "2"})) == 2.0


def test_through_dspy_one_retry_layer(fake: FakeOpenAI) -> None:
    """DSPy retries 0 times: the attempts at the fake are the engine's max_attempts exactly."""
    fake.config.fail_status = 503
    handle = build_lm(MODEL, KEY, fake.url, 5.0, Policy(max_attempts=3, backoff_base_s=0.01))
    assert handle.lm.num_retries == 0
    with pytest.raises(LLMCallError) as raised:
        asyncio.run(write_caption(handle, "cats", format="drake"))
    assert fake.attempts == 3
    assert failure_of(raised.value)[0] is ErrorCode.LLM_UNAVAILABLE
    fake.config.fail_status = None
    fake.reset()
    caption = asyncio.run(write_caption(handle, "cats", format="drake"))
    assert caption.texts and fake.calls == 1


class Unclosable(asyncio.SelectorEventLoop):
    def close(self) -> None:
        raise RuntimeError("this loop will not close")


def test_a_loop_that_will_not_close_leaves_the_closer_closing_the_next(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Each thread's loop is closed by one closer thread when the thread ends; one failing
    close (seen in CI: a loop's self-pipe already closed) is logged, and the closer goes on."""
    broken = Unclosable()
    client._open_loops.add(broken)
    client._to_close.put(broken)
    loops = []

    def a_call_then_the_threads_end() -> None:
        engine(fake).complete(REQUEST)
        loops.append(client._threads.loop.loop)

    thread = threading.Thread(target=a_call_then_the_threads_end)
    thread.start()
    thread.join()
    wait_for(lambda: loops[0].is_closed(), scaled(5.0), what="the next thread's loop closed")
    assert "a thread's event loop did not close" in caplog.text
    asyncio.SelectorEventLoop.close(broken)


def test_an_ended_threads_loop_is_closed_by_the_closer_never_by_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread's loop wrapper can outlive its thread in a reference cycle (a failed call's
    traceback holds it). Collected with its loop, the loop's own finalizer closed the loop
    (unclosed) while the closer closed it too: seen in CI as "Invalid file descriptor: -1" in
    the closer and a self-pipe gone in the finalizer. The closer must close every one."""
    ours: set[int] = set()  # the ids of this test's threads' loops (other tests' loops aside)
    finalized: list[bool] = []  # each of ours collected: was it closed?
    finalizer = asyncio.BaseEventLoop.__del__

    def recorded(loop: asyncio.BaseEventLoop) -> None:
        if id(loop) in ours:
            finalized.append(loop.is_closed())
        finalizer(loop)

    monkeypatch.setattr(asyncio.BaseEventLoop, "__del__", recorded)

    async def nothing() -> None:
        pass

    def a_call_then_the_threads_end() -> None:
        client.run_blocking(nothing)
        ours.add(id(client._threads.loop.loop))
        cycle: list = [client._threads.loop]
        cycle.append(cycle)

    for _ in range(5):
        thread = threading.Thread(target=a_call_then_the_threads_end)
        thread.start()
        thread.join()
        gc.collect()

    def all_collected() -> bool:
        gc.collect()
        return len(finalized) == 5

    wait_for(all_collected, scaled(5.0), what="the 5 loops collected")
    assert finalized == [True] * 5
