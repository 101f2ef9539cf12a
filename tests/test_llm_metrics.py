"""The client layer's metrics: counted in the worker processes, gathered through Redis, shown
by the gateway's /metrics."""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from memesys.llm.errors import LLMCallError
from memesys.llm.metrics import BUCKETS_S, recorder_for, render
from memesys.testing.fake_openai import FakeOpenAI
from tests.support.daemon import DaemonProcess
from tests.support.llm import make_engine, write_request
from tests.support.metrics import sample
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
    assert sample(text, "memesys_llm_calls_total", model=name, outcome="ok") == 1
    assert sample(text, "memesys_llm_attempts_total", model=name, outcome="server") == 3
    assert sample(text, "memesys_llm_calls_total", model=name, outcome="open") >= 1
    assert sample(text, "memesys_llm_breaker_state", model=name) == 2
    assert sample(text, "memesys_llm_breaker_transitions_total", model=name, to="open") == 1
    assert sample(text, "memesys_llm_tokens_total", model=name, type="input") > 0
    assert sample(text, "memesys_llm_tokens_total", model=name, type="output") > 0
    assert sample(text, "memesys_llm_cost_usd_total", model=name) is not None
    assert sample(text, "memesys_llm_call_seconds_count", model=name) == 4
    # a histogram as Prometheus reads it: every bucket, in order, cumulative, +Inf = _count
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "memesys_llm_call_seconds"
    ]
    assert family.type == "histogram"
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert (
        bounds == sorted(bounds)
        and bounds[-1] == float("inf")
        and len(bounds) == len(BUCKETS_S) + 1
    )
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 4


def test_a_count_labelled_by_an_older_version_is_left_out(redis: str) -> None:
    prefix = shared_prefix(f"t{uuid.uuid4().hex[:6]}")
    client = redis_lib.Redis.from_url(redis)
    try:
        client.hset(
            f"{prefix}:llm:metrics",
            mapping={
                "memesys_llm_tokens_total|model=m": 40,  # before tokens had a type
                "memesys_llm_tokens_total|model=m,type=input": 7,
            },
        )
        text = render(client, prefix)
        tokens = [
            (s.labels, s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "memesys_llm_tokens_total"
        ]
        assert tokens == [({"model": "m", "type": "input"}, 7.0)]
    finally:
        client.delete(f"{prefix}:llm:metrics")
        client.close()


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
    assert any(
        s.name == "memesys_llm_calls_total" and s.labels.get("outcome") == "ok"
        for f in text_string_to_metric_families(text)
        for s in f.samples
    )
    assert "memesys_llm_tokens_total" in text
