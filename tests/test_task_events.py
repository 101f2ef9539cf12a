"""A task's progress as it happens (``GET /v1/tasks/{id}/events``) and its cancel (``DELETE
/v1/tasks/{id}``), through the real daemon against the fake OpenAI server: a live client sees
the meme's stages arrive in order and the meme at the end; a late client gets the whole history
at once; ``Last-Event-ID`` resumes exactly after; a cancelled task's meme makes no provider call
after the cancel's answer."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass

import pytest

from memesys.testing.fake_openai import FakeConfig
from tests.support.daemon import DaemonProcess, wait_task
from tests.support.provider import fake_provider_fixture, provider_env
from tests.support.timing import scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.store]

fake = fake_provider_fixture(scope="module")

LATENCY_S = 0.3  # each provider call: a meme's stages are apart in time
SLOW_S = 1.5  # each provider call while a task is cancelled
KEEPALIVE_S = 0.5
STAGES = {"format_chosen", "caption_written", "verdict", "scored", "refined", "rendered"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, fake):
    d = DaemonProcess(
        tmp_path_factory.mktemp("events"),
        provider_env(fake, MEMESYS_GATEWAY_EVENT_KEEPALIVE_S=str(KEEPALIVE_S)),
    ).start()
    yield d
    assert d.stop() == []


@pytest.fixture(autouse=True)
def provider(fake):
    fake.config = FakeConfig(latency_s=LATENCY_S)
    fake.reset()
    yield fake
    fake.config = FakeConfig()


@dataclass
class Message:
    id: int
    type: str
    data: dict
    at: float  # when it arrived (monotonic)


@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    messages: list[Message]
    comments: list[str]
    ended: bool  # the server ended it


def read_stream(
    daemon: DaemonProcess, task_id: str, headers: dict | None = None, query: str = ""
) -> Stream:
    """The whole stream, until the server ends it (or a bound of a minute)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=scaled(30))
    conn.request("GET", f"/v1/tasks/{task_id}/events{query}", headers=headers or {})
    response = conn.getresponse()
    stream = Stream(response.status, dict(response.getheaders()), [], [], False)
    if response.status != 200:
        stream.messages.append(Message(0, "error", json.loads(response.read()), 0.0))
        conn.close()
        return stream
    fields: dict[str, str] = {}
    deadline = time.monotonic() + scaled(60)
    while time.monotonic() < deadline:
        line = response.readline()
        if not line:
            stream.ended = True
            break
        text = line.decode().rstrip("\n")
        if text.startswith(":"):
            stream.comments.append(text)
        elif text:
            name, _, value = text.partition(": ")
            fields[name] = value
        elif fields:
            stream.messages.append(
                Message(
                    int(fields["id"]), fields["event"], json.loads(fields["data"]), time.monotonic()
                )
            )
            fields = {}
    conn.close()
    return stream


def submit(daemon: DaemonProcess, topic: str) -> str:
    status, accepted = daemon.json("POST", "/v1/memes?async=true", {"topic": topic, "fresh": True})
    assert status == 202, accepted
    return accepted["task_id"]


def check_history(stream: Stream, daemon: DaemonProcess) -> None:
    """A finished meme's whole story, in order, ending with the meme as GET serves it."""
    assert stream.status == 200 and stream.ended
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert stream.headers["Cache-Control"] == "no-store"
    types = [m.type for m in stream.messages]
    assert [m.id for m in stream.messages] == list(range(1, len(types) + 1))
    assert types[0] == "task_queued" and types[1] == "task_running", types
    assert types[-1] == "completed", types
    assert set(types[2:-1]) <= STAGES, types
    assert types.index("format_chosen") < types.index("caption_written") < types.index("verdict")
    assert types.index("verdict") < types.index("scored") < types.index("rendered")
    assert types.count("verdict") >= 3
    caption = stream.messages[types.index("caption_written")].data
    meme = stream.messages[-1].data["meme"]
    assert caption["format"] == meme["format"]
    assert set(caption["texts"]) == {slot["name"] for slot in format_slots(daemon, meme["format"])}
    verdict = stream.messages[types.index("verdict")].data
    assert set(verdict) == {"round", "verifier", "status", "confidence", "reasons"}
    scored = stream.messages[types.index("scored")].data
    assert set(scored) == {"round", "overall", "scores"} and "humor" in scored["scores"]
    assert stream.messages[types.index("rendered")].data["bytes"] > 0
    status, served = daemon.json("GET", f"/v1/memes/{meme['id']}")
    assert status == 200 and served == meme


def format_slots(daemon: DaemonProcess, name: str) -> list[dict]:
    _, catalogue = daemon.json("GET", "/v1/formats")
    return next(f["slots"] for f in catalogue["formats"] if f["name"] == name)


def test_a_live_client_sees_each_stage_as_it_happens_then_the_meme(daemon):
    task_id = submit(daemon, "live progress of a kettle")
    stream = read_stream(daemon, task_id)
    check_history(stream, daemon)
    arrived = {m.type: m.at for m in reversed(stream.messages)}  # each type's first
    # the caption was shown while it was being judged: a provider call (0.3 s) before the end
    assert arrived["caption_written"] <= stream.messages[-1].at - LATENCY_S * 0.9
    assert wait_task(daemon, task_id)["status"] == "succeeded"


def test_a_late_client_gets_the_whole_history_at_once_and_resumes_exactly(daemon):
    task_id = submit(daemon, "history of a teapot")
    assert wait_task(daemon, task_id)["status"] == "succeeded"
    whole = read_stream(daemon, task_id)
    check_history(whole, daemon)
    assert whole.comments == []  # nothing to wait for
    again = read_stream(daemon, task_id)
    assert [(m.id, m.type, m.data) for m in again.messages] == [
        (m.id, m.type, m.data) for m in whole.messages
    ]
    for after in (1, 4, len(whole.messages) - 1):
        resumed = read_stream(daemon, task_id, headers={"Last-Event-ID": str(after)})
        assert resumed.ended
        assert [(m.id, m.type, m.data) for m in resumed.messages] == [
            (m.id, m.type, m.data) for m in whole.messages[after:]
        ]
    by_query = read_stream(daemon, task_id, query="?last_event_id=2")
    assert [m.id for m in by_query.messages] == [m.id for m in whole.messages[2:]]
    past_the_end = read_stream(daemon, task_id, headers={"Last-Event-ID": str(len(whole.messages))})
    assert past_the_end.ended and past_the_end.messages == []


def test_an_unknown_task_or_a_bad_resume_id_is_a_json_error(daemon):
    unknown = read_stream(daemon, "0" * 32)
    assert unknown.status == 404
    assert unknown.messages[0].data["error"]["code"] == "not_found"
    task_id = submit(daemon, "bad resume ids")
    bad = read_stream(daemon, task_id, headers={"Last-Event-ID": "twelve"})
    assert bad.status == 422
    assert bad.messages[0].data["error"]["code"] == "invalid_field"
    status, body = daemon.json("DELETE", f"/v1/tasks/{'0' * 32}")
    assert status == 404 and body["error"]["code"] == "not_found"
    wait_task(daemon, task_id)


def test_a_cancelled_task_makes_no_provider_call_after_the_answer(daemon, provider):
    provider.config = FakeConfig(latency_s=SLOW_S)
    task_id = submit(daemon, "a slow kettle to cancel")
    streamed: list[Stream] = []
    reader = threading.Thread(target=lambda: streamed.append(read_stream(daemon, task_id)))
    reader.start()

    def staged() -> dict | None:  # its progress follows its meme's stages
        _, task = daemon.json("GET", f"/v1/tasks/{task_id}")
        return task if task["stage"] in STAGES else None

    running = wait_for(staged, timeout=20, what="the task's meme to reach a stage")
    assert running["status"] == "running" and 0.1 < running["progress"] < 1.0, running
    status, cancelled = daemon.json("DELETE", f"/v1/tasks/{task_id}")
    assert status == 202, cancelled
    assert cancelled["status"] == "cancelled" and cancelled["task_id"] == task_id
    calls = provider.attempts
    time.sleep(scaled(2 * SLOW_S + 1))  # a meme not cancelled would make its next calls
    assert provider.attempts == calls
    reader.join(scaled(10))
    (stream,) = streamed
    assert stream.ended and stream.messages[-1].type == "cancelled"
    assert stream.messages[-1].data == {}
    assert [m.type for m in stream.messages][:2] == ["task_queued", "task_running"]
    status, task = daemon.json("GET", f"/v1/tasks/{task_id}")
    assert status == 200 and task["status"] == "cancelled"
    again, body = daemon.json("DELETE", f"/v1/tasks/{task_id}")
    assert again == 409 and body["error"]["code"] == "task_finished"


def test_a_finished_task_cannot_be_cancelled(daemon):
    task_id = submit(daemon, "already done")
    assert wait_task(daemon, task_id)["status"] == "succeeded"
    status, body = daemon.json("DELETE", f"/v1/tasks/{task_id}")
    assert status == 409 and body["error"]["code"] == "task_finished"
    _, task = daemon.json("GET", f"/v1/tasks/{task_id}")
    assert task["status"] == "succeeded"


def test_a_waiting_stream_sends_keep_alives(daemon, provider):
    provider.config = FakeConfig(latency_s=4 * KEEPALIVE_S)
    task_id = submit(daemon, "a patient kettle")
    stream = read_stream(daemon, task_id)
    assert stream.ended and stream.messages[-1].type == "completed"
    assert ": keep-alive" in stream.comments
