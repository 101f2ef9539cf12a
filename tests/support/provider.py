"""The fake OpenAI-compatible provider (:mod:`memesys.testing.fake_openai`) for tests: served
from a thread of the test process, and the environment that points a daemon at it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytest

from memesys.llm.breaker import forget_all
from memesys.testing.fake_openai import DEFAULT_API_KEY, DEFAULT_MODEL, FakeConfig, FakeOpenAI

KEY = DEFAULT_API_KEY
MODEL = DEFAULT_MODEL

Scope = Literal["function", "module"]


@contextmanager
def fake_provider(config: FakeConfig | None = None) -> Iterator[FakeOpenAI]:
    """A fake provider in a thread of this process; breakers this process cached are
    forgotten afterwards, so no test inherits another's open circuit."""
    # a copy: tests change their server's config, and the next server starts afresh
    server = FakeOpenAI(copy.deepcopy(config or FakeConfig()), api_key=KEY).start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()
        forget_all()


def fake_provider_fixture(
    config: FakeConfig | None = None, scope: Scope = "function"
) -> Callable[..., Any]:
    """A ``fake`` fixture serving ``config``, for a module whose provider is not the default;
    assign it to the name ``fake`` to override the shared one."""

    @pytest.fixture(scope=scope, name="fake")
    def fixture() -> Iterator[FakeOpenAI]:
        with fake_provider(config) as server:
            yield server

    return fixture


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A fake provider with the default configuration, for one test."""
    with fake_provider() as server:
        yield server


def provider_env(fake: FakeOpenAI, model: str = MODEL, **settings: str) -> dict[str, str]:
    """A daemon's environment for ``fake``: its key, URL and ``model``, plus ``settings``
    (``MEMESYS_*`` variables)."""
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": fake.url,
        "MEMESYS_LLM_MODEL": model,
        **settings,
    }
