"""The client layer's metrics: counted in the worker processes, gathered through Redis, shown
by the gateway's /metrics."""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib

from memesys.llm.errors import LLMCallError
from memesys.llm.metrics import recorder_for, render
from memesys.testing.fake_openai import FakeOpenAI
from tests.support.daemon import DaemonProcess
from tests.support.llm import make_engine, write_request
from tests.support.provider import provider_env
from tests.support.redis_server import shared_prefix

pytestmark = pytest.mark.store

REQUEST = write_request()


def test_calls_attempts_breaker_and_tokens_are_counted(fake: FakeOpenAI, redis: str) -> None:
    prefix = shared_prefix(f"t{uuid.uuid4().hex[:6]}")
    engine = make_engine(
        fake.url,
        redis_url=redis,
        key_prefix=prefix,
        max_attempts=2,
        breaker_failures=3,
        prices="fake-model=1:1",
    )
    engine.complete(REQUEST)
    fake.config.fail_status = 500
    for _ in range(3):
        with pytest.raises(LLMCallError):
            engine.complete(REQUEST)
    recorder_for(redis, prefix).flush()
    text = render(redis_lib.Redis.from_url(redis), prefix)
    name = engine.name
    assert f'memesys_llm_calls_total{{model="{name}",outcome="ok"}} 1' in text
    assert f'memesys_llm_attempts_total{{model="{name}",outcome="server"}} 3' in text
    assert f'memesys_llm_calls_total{{model="{name}",outcome="open"}}' in text
    assert f'memesys_llm_breaker_state{{model="{name}"}} 2' in text
    assert f'memesys_llm_breaker_transitions_total{{model="{name}",to="open"}} 1' in text
    assert f'memesys_llm_tokens_total{{model="{name}"}}' in text
    assert f'memesys_llm_cost_usd_total{{model="{name}"}}' in text
    assert f'memesys_llm_call_seconds_count{{model="{name}"}} 4' in text
    assert "# TYPE memesys_llm_call_seconds histogram" in text


@pytest.mark.slow
def test_the_gateway_shows_the_workers_llm_metrics(tmp_path, fake: FakeOpenAI) -> None:
    d = DaemonProcess(
        tmp_path,
        {
            **provider_env(fake),
        },
    ).start()
    try:
        status, _, body = d.request("POST", "/v1/memes", {"fresh": True, "topic": "counted"})
        assert status == 201, body
        time.sleep(1.2)  # the scenario: workers flush at most once a second, on their next call
        d.request("POST", "/v1/memes", {"fresh": True, "topic": "flushed"})
        status, _, metrics = d.request("GET", "/metrics")
    finally:
        assert d.stop() == []
    text = metrics.decode()
    assert status == 200
    assert 'memesys_llm_calls_total{model="' in text and 'outcome="ok"' in text
    assert "memesys_llm_tokens_total" in text
