"""The gateway in process against a scripted directory: no actor system starts.

:class:`FakeDirectory` has the interface of :class:`actors.bridge.Directory` that the gateway
uses (``ask(path, payload, timeout, idempotent)``, ``root``, and ``bridge.ask``/
``bridge.stale_replies``) and answers each message type as scripted: a value, a
:class:`~actors.messages.Failure` (raised as :class:`~actors.bridge.RemoteFailure`, as the
real bridge does), or an exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import pytest

from actors.bridge import RemoteFailure
from actors.messages import Failure, Ping, Pong, StatusQuery, TreeStatus
from memesys.config import load
from memesys.domain.messages import StoreHealth, StoreState
from memesys.errors import ErrorCode

ROOT = "root-supervisor"
# What no client may ever read: an actor address, a socket path, a Python type name.
LEAKS = re.compile(r"ActorAddr|\.sock\b|/tmp/|Traceback|\b[A-Z]\w*(Error|Exception)\b")


def a_meme(meme_id: str = "m1", cached: bool = False) -> dict:
    return {
        "id": meme_id,
        "topic": "mondays",
        "format": "drake",
        "top_text": "a",
        "bottom_text": "b",
        "image_url": f"/v1/memes/{meme_id}/image.png",
        "scores": None,
        "cached": cached,
        "created_at": 1.0,
        "timings": {},
        "trace_id": "t",
        "provider": {"name": "offline"},
        "verification": {
            "verdicts": {
                "appropriateness": {"status": "passed"},
                "factuality": {"status": "unavailable"},
            },
            "degraded": ["factuality"],
        },
    }


class FakeBridge:
    def __init__(self, directory: FakeDirectory) -> None:
        self.directory = directory
        self.stale_replies = 3

    async def ask(self, target: Any, payload: Any, timeout: float, idempotent: bool = False) -> Any:
        assert target == ROOT, target
        return await self.directory.answer(ROOT, payload, timeout, idempotent)


class FakeDirectory:
    """Scripted answers by message type; every ask is recorded as (path, payload, timeout,
    idempotent). An unscripted message fails the test (it shows as a 500 ``internal``)."""

    def __init__(self) -> None:
        self.root = ROOT
        self.bridge = FakeBridge(self)
        self.asked: list[tuple[str, Any, float, bool]] = []
        self.scripts: dict[type, Any] = {
            Ping: Pong("memesys", 1),
            StoreHealth: StoreState(True),
            StatusQuery: TreeStatus("memesys", "rest_for_one", ()),
        }

    def script(self, message: type, answer: Any) -> None:
        self.scripts[message] = answer

    async def ask(self, path: str, payload: Any, timeout: float, idempotent: bool = False) -> Any:
        return await self.answer(path, payload, timeout, idempotent)

    async def answer(self, path: str, payload: Any, timeout: float, idempotent: bool) -> Any:
        self.asked.append((path, payload, timeout, idempotent))
        if type(payload) not in self.scripts:
            pytest.fail(f"unscripted ask {payload!r} at {path}")
        answer = self.scripts[type(payload)]
        if callable(answer) and not isinstance(answer, (Failure, BaseException)):
            answer = answer(payload)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if isinstance(answer, Failure):
            raise RemoteFailure(answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer


GATEWAY = dataclasses.replace(
    load(env={}).gateway, request_timeout_s=7.0, max_in_flight=4, max_queue=2, max_body_bytes=4096
)


async def error_of(response: Any, status: int, code: str) -> dict:
    """The error body, checked against the contract: status, shape, code, a clean message,
    and Retry-After exactly on retryable 429/503 answers."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert set(body["error"]) <= {"code", "message", "field"}, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    assert not LEAKS.search(error["message"]), error["message"]
    contract = ErrorCode(code)
    assert contract.status == status
    if contract.retryable and status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1
    else:
        assert "Retry-After" not in response.headers
    return error
