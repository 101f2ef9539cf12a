"""The task event stream's HTTP side in process (``memesys.http.progress``), against a scripted
directory and a scripted event source: its bound on open streams, its end on shutdown, the
last message filled in from the task's record, and DELETE's answers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from actors.messages import Failure
from memesys.domain.messages import CancelTask, GetTask
from memesys.domain.progress import Shown
from memesys.http.app import Gateway
from memesys.tree.paths import LEDGER
from tests.support.gateway import GATEWAY, FakeDirectory, a_meme

TASK = "a" * 32


class Scripted:
    """Yields ``messages``, then waits (keep-alives every ``wait_s``) until ``release``."""

    def __init__(self, messages: list[Shown]) -> None:
        self.messages = messages
        self.release = asyncio.Event()
        self.closed = False

    async def follow(self, task_id: str, after: int, wait_s: float) -> AsyncIterator[Shown | None]:
        for message in self.messages[after:]:
            yield message
        while not self.release.is_set():
            try:
                await asyncio.wait_for(self.release.wait(), wait_s)
            except TimeoutError:
                yield None

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def directory() -> FakeDirectory:
    d = FakeDirectory()
    d.script(GetTask, lambda q: {"id": q.task_id, "status": "succeeded", "meme": a_meme()})
    return d


@pytest.fixture
def events() -> Scripted:
    return Scripted([Shown(1, "task_queued"), Shown(2, "task_running"), Shown(3, "completed")])


@pytest.fixture
def gateway(directory: FakeDirectory, events: Scripted) -> Gateway:
    cfg = dataclasses.replace(GATEWAY, max_event_streams=1, event_keepalive_s=0.05)
    return Gateway(cfg, directory, events=events)


@pytest.fixture
async def client(aiohttp_client: Callable, gateway: Gateway) -> Any:
    return await aiohttp_client(gateway.app())


async def test_the_last_message_carries_the_meme_of_the_tasks_record(client) -> None:
    response = await client.get(f"/v1/tasks/{TASK}/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    text = await response.text()
    assert text.startswith("id: 1\nevent: task_queued\ndata: {}\n\n")
    assert 'id: 3\nevent: completed\ndata: {"meme":{"id":"m1"' in text
    resumed = await client.get(f"/v1/tasks/{TASK}/events", headers={"Last-Event-ID": "2"})
    assert (await resumed.text()).startswith("id: 3\nevent: completed\n")


async def test_streams_past_the_bound_are_refused_then_admitted_again(client, events) -> None:
    events.messages = [Shown(1, "task_running")]  # then it waits
    first = await client.get(f"/v1/tasks/{TASK}/events")
    assert first.status == 200
    assert await first.content.readuntil(b"\n\n") == b"id: 1\nevent: task_running\ndata: {}\n\n"
    assert await first.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    refused = await client.get(f"/v1/tasks/{TASK}/events")
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "overloaded"
    events.release.set()
    await first.read()  # it ended
    again = await client.get(f"/v1/tasks/{TASK}/events")
    assert again.status == 200


async def test_shutdown_ends_every_stream(client, gateway, events) -> None:
    events.messages = []
    first = await client.get(f"/v1/tasks/{TASK}/events")
    assert await first.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert gateway.progress is not None
    await gateway.progress.close(client.app)
    assert await asyncio.wait_for(first.read(), 5) is not None  # ended, not hanging
    assert events.closed


async def test_a_failed_task_ends_with_its_public_error(client, directory, events) -> None:
    failed = {"id": TASK, "status": "failed", "error": {"code": "crashed", "message": "ActorAddr"}}
    directory.script(GetTask, lambda q: failed)
    events.messages = [Shown(1, "failed")]
    text = await (await client.get(f"/v1/tasks/{TASK}/events")).text()
    assert text.startswith('id: 1\nevent: failed\ndata: {"code":"worker_lost","message":')
    assert "ActorAddr" not in text


async def test_delete_answers_202_with_the_cancelled_task(client, directory) -> None:
    cancelled = {"id": TASK, "status": "cancelled", "stage": "done", "progress": 1.0}
    directory.script(CancelTask, lambda q: {**cancelled, "created_at": 1.0, "updated_at": 2.0})
    response = await client.delete(f"/v1/tasks/{TASK}")
    assert response.status == 202
    body = await response.json()
    assert body["task_id"] == TASK and body["status"] == "cancelled"
    assert directory.asked[-1][:2] == (LEDGER, CancelTask(TASK))
    directory.script(CancelTask, Failure("task_finished", f"task {TASK} has already succeeded"))
    finished = await client.delete(f"/v1/tasks/{TASK}")
    assert finished.status == 409
    assert (await finished.json())["error"]["code"] == "task_finished"


@pytest.mark.parametrize(
    "headers, query, field",
    [
        ({"Last-Event-ID": "twelve"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "12345678"}, "", "Last-Event-ID"),  # 8 digits: past any event id
        ({"Last-Event-ID": "-1"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "٣"}, "", "Last-Event-ID"),  # a digit, not an ASCII one
        ({"Last-Event-ID": ""}, "", "Last-Event-ID"),
        ({}, "?last_event_id=%205", "last_event_id"),
        ({}, "?last_event_id=", "last_event_id"),
        ({"Last-Event-ID": "2"}, "?last_event_id=x", "last_event_id"),  # each one sent: valid
    ],
)
async def test_a_resume_id_the_document_does_not_allow_is_422(client, headers, query, field):
    """What the document declares of Last-Event-ID and last_event_id (1 to 7 ASCII digits,
    schemas.EVENT_ID_PATTERN) is what the stream accepts, each one whatever the other says."""
    encoded = {k: v.encode().decode("latin-1") for k, v in headers.items()}
    response = await client.get(f"/v1/tasks/{TASK}/events{query}", headers=encoded)
    assert response.status == 422
    body = await response.json()
    assert body["error"]["code"] == "invalid_field" and body["error"]["field"] == field


async def test_the_header_wins_over_the_query(client) -> None:
    both = await client.get(
        f"/v1/tasks/{TASK}/events?last_event_id=1", headers={"Last-Event-ID": "2"}
    )
    assert (await both.text()).startswith("id: 3\nevent: completed\n")
    query = await client.get(f"/v1/tasks/{TASK}/events?last_event_id=0000001")
    assert (await query.text()).startswith("id: 2\nevent: task_running\n")
