"""API tokens for tests: ``memesys-admin`` run in the test's process against the module's
Redis under the test's own prefix (:mod:`tests.support.redis_server`), the tokens it makes, and
the gateway's reader of them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from memesys.cli import admin
from memesys.storage.tokens import TokenReader
from tests.support.redis_server import REAL_URL


def url_of(client: redis.Redis) -> str:
    """The URL of the test's Redis (the embedded server's socket, or MEMESYS_TEST_REDIS_URL)."""
    path = client.connection_pool.connection_kwargs.get("path")
    return f"unix://{path}" if path else REAL_URL


@pytest.fixture
def redis_env(client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """memesys-admin, run in this process, talks to the test's Redis under its prefix."""
    url = url_of(client)
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("MEMESYS_REDIS_KEY_PREFIX", prefix)
    return url


Admin = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_admin(redis_env: str, capsys: pytest.CaptureFixture[str]) -> Admin:
    """``memesys-admin ARGS`` (its ``main``): exit code, stdout, stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = admin.main(list(args))
        out, err = capsys.readouterr()
        return code, out.strip(), err.strip()

    return run


def made(run_admin: Admin, name: str) -> str:
    code, out, err = run_admin("--json", "token", "create", name)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["name"] == name
    return answer["token"]


@pytest.fixture
async def reader(redis_env: str, prefix: str) -> AsyncIterator[TokenReader]:
    tokens = TokenReader(redis_env, prefix, 2.0)
    yield tokens
    await tokens.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
