"""Fallbacks with real HTTP against the fake server: the primary model always fails (per-model
faults), the fallback serves within the same deadline, and the meme records which model
answered each stage."""

from __future__ import annotations

import time

import pytest

from actors import deadlines
from memesys.llm import served
from memesys.llm.errors import LLMCallError
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.daemon import DaemonProcess
from tests.support.llm import make_engine, write_request
from tests.support.provider import KEY, fake_provider_fixture, provider_env
from tests.support.timing import scaled

REQUEST = write_request()


fake = fake_provider_fixture(FakeConfig(fail_status=500, fail_model="primary"))


def test_the_fallback_serves_when_the_primary_is_out_of_attempts(fake: FakeOpenAI) -> None:
    engine = make_engine(fake.url, "primary", max_attempts=2, breaker_failures=100)
    engine.fallbacks = tuple(make_engine(fake.url, m, max_attempts=2) for m in ("backup",))
    with served.tracking() as calls:
        assert engine.complete(REQUEST).text
    assert calls.models == ["backup"]
    assert fake.attempts_by_model == {"primary": 2, "backup": 1}
    assert engine.fallbacks_taken == 1


def test_an_open_primary_goes_straight_to_the_fallback(fake: FakeOpenAI) -> None:
    from memesys.llm.transport import HardenedTransport, Policy

    policy = Policy(max_attempts=1, breaker_failures=2, breaker_reset_s=30, backoff_base_s=0.01)
    engine = HardenedTransport("primary", KEY, fake.url, policy, fallbacks=("backup", "primary"))
    assert [e.model for e in engine.fallbacks] == ["backup"]
    for _ in range(4):
        engine.complete(REQUEST)
    # the breaker opened after 2 failed attempts: the primary is not tried any more
    assert fake.attempts_by_model == {"primary": 2, "backup": 4}


def test_every_model_failing_fails_with_the_last_failure(fake: FakeOpenAI) -> None:
    fake.config.fail_model = ""
    engine = make_engine(fake.url, "primary", max_attempts=1)
    engine.fallbacks = (make_engine(fake.url, "backup", max_attempts=1),)
    with pytest.raises(LLMCallError) as raised:
        engine.complete(REQUEST)
    assert raised.value.model == "backup"
    assert fake.attempts_by_model == {"primary": 1, "backup": 1}


def test_the_deadline_is_not_reset_for_the_fallback(fake: FakeOpenAI) -> None:
    fake.config = FakeConfig(hang_s=5.0)
    engine = make_engine(fake.url, "primary", max_attempts=1)
    engine.fallbacks = (make_engine(fake.url, "backup", max_attempts=1),)
    began = time.perf_counter()
    with deadlines.serving(time.time() + 0.4), pytest.raises(LLMCallError):
        engine.complete(REQUEST)
    # One 0.4 s deadline for both, not 0.4 s each; 0.2 s (scaled) of margin.
    assert time.perf_counter() - began < 0.4 + scaled(0.2)


@pytest.mark.slow
@pytest.mark.store
def test_the_meme_says_which_model_served(tmp_path, fake: FakeOpenAI) -> None:
    d = DaemonProcess(
        tmp_path,
        {
            **provider_env(fake, "primary"),
            "MEMESYS_LLM_FALLBACK_MODELS": "backup",
            "MEMESYS_LLM_MAX_ATTEMPTS": "1",
        },
    ).start()
    try:
        status, meme = d.json("POST", "/v1/memes", {"fresh": True, "topic": "fallbacks"})
    finally:
        assert d.stop() == []
    assert status == 201, meme
    stages = meme["provider"]["stages"]
    assert stages and {s["model"] for s in stages.values()} == {"backup"}
    assert fake.calls_by_model["primary"] == 0 and fake.calls_by_model["backup"] >= 5
