"""The fake OpenAI-compatible endpoint: wire shape, latency, auth, fault injection, the CLI, and
the meme program run end to end against it through DSPy's native (lm15) HTTP engine."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import dspy
import pytest
from dspy.utils.exceptions import LMError, LMRateLimitError

from memesys.pipeline.lm import OPENAI_COMPATIBLE, build_lm, offline_lm
from memesys.pipeline.writing import write_caption
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
# A prompt as DSPy's ChatAdapter writes it for a signature the writer knows.
SELECT_SYSTEM = (
    "Your input fields are:\n1. `topic` (str): what the meme is about\n"
    "2. `catalogue` (str): formats\n3. `seed` (int): variation\n"
    "Your output fields are:\n1. `format_name` (str): a name\n2. `reason` (str): why\n"
    "All interactions will be structured in the following way, with the appropriate values "
    "filled in.\n\n[[ ## completed ## ]]\nIn adhering to this structure, your objective is: "
    "pick.")
SELECT_USER = (
    "[[ ## topic ## ]]\nmonday coffee\n\n[[ ## catalogue ## ]]\n"
    "drake: preferences, this not that\nthis-is-fine: calm denial while everything burns\n\n"
    "[[ ## seed ## ]]\n0\n\nRespond with the corresponding output fields, starting with the "
    "field `[[ ## format_name ## ]]`, then `[[ ## reason ## ]]`, and then ending with the "
    "marker for `[[ ## completed ## ]]`.")
SELECT_BODY = {"model": "fake-model", "temperature": 0.0, "max_tokens": 1000,
               "messages": [{"role": "system", "content": SELECT_SYSTEM},
                            {"role": "user", "content": SELECT_USER}]}


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


async def post(session: aiohttp.ClientSession, fake: FakeOpenAI, body: Any,
               key: str | None = KEY) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.post(f"{fake.url}/chat/completions", json=body,
                            headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def urlopen(url: str, body: Any | None = None, key: str = KEY,
            timeout: float = 5.0) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A raw stdlib request: (status, headers, JSON body), errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
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
        1, {"fake-model": 1}, [SELECT_BODY])


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
        answers = [(await post(session, fake, SELECT_BODY))[2]["choices"][0]["message"]
                   ["content"] for _ in range(2)]
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
        async with session.post(f"{fake.url}/chat/completions", data=b"{not json",
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
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
    assert status == 200 and delays(1)[0] <= elapsed < 0.06 + 0.2


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
    assert time.perf_counter() - began < 1.5
    assert threaded.calls == 0
    # stop_thread (in the fixture) must not wait out the hang: it cancels in-flight requests.


# ---------------------------------------------------------------------- through DSPy

def test_meme_program_end_to_end(threaded: FakeOpenAI) -> None:
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    assert handle.provider == OPENAI_COMPATIBLE
    offline = offline_lm()

    caption = write_caption(handle, "cats")
    # Two stages (SelectFormat, then WriteCaption): exactly two requests reached the fake.
    assert threaded.calls == 2 == len(threaded.requests)
    assert threaded.calls_by_model == {"fake-model": 2}
    outputs = [body["messages"][0]["content"] for body in threaded.requests]
    assert "`format_name`" in outputs[0] and "`captions`" in outputs[1]
    # The same text the offline engine writes, having crossed HTTP and the OpenAI wire.
    expected = write_caption(offline, "cats")
    assert (caption.format, caption.texts, caption.reason) == (
        expected.format, expected.texts, expected.reason)
    assert caption.tokens > 0

    # A named format skips SelectFormat: one stage, one request.
    threaded.reset()
    caption = write_caption(handle, "cats", format="drake", style="smug", seed=3)
    assert caption.format == "drake" and len(caption.texts) == 2
    assert threaded.calls == 1


def test_concurrent_dspy_calls_overlap(threaded: FakeOpenAI) -> None:
    """Threads calling through DSPy see the latency once, not once per call in sequence."""
    threaded.config.latency_s = 0.1
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    results: list[Any] = []

    def run(seed: int) -> None:
        results.append(write_caption(handle, "cats", format="drake", seed=seed))

    workers = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    assert len(results) == 8 and threaded.calls == 8
    assert elapsed < 0.6, f"8 concurrent DSPy calls took {elapsed:.3f} s"


def test_dspy_sees_a_429_once_with_its_retry_after(threaded: FakeOpenAI) -> None:
    """One attempt, no retry (the daemon owns retries), and Retry-After reaches the caller."""
    threaded.config.fail_status, threaded.config.retry_after_s = 429, 1.5
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    with pytest.raises(LMRateLimitError) as raised:
        write_caption(handle, "cats", format="drake")
    assert raised.value.status == 429 and raised.value.retry_after == 1.5
    assert (threaded.attempts, threaded.failures, threaded.calls) == (1, 1, 0)


def test_json_adapter_end_to_end(threaded: FakeOpenAI) -> None:
    """The writer answers JSON when the JSONAdapter asks for it, over the wire too."""
    handle = build_lm(model="fake-model", api_key=KEY, base_url=threaded.url, timeout_s=5)
    with dspy.context(adapter=dspy.JSONAdapter()):
        caption = write_caption(handle, "cats")
    expected = write_caption(offline_lm(), "cats")
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
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("fake-openai ready at http://127.0.0.1:"), (
            line, process.stderr.read() if process.poll() is not None else "")
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
