"""A module-scoped Redis client for store tests: the server named by MEMESYS_TEST_REDIS_URL
(CI's Redis service), else an embedded redis-server of the module's own; a key prefix of the
test's own on it (its keys deleted afterwards), and a MemeStore under that prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memesys.storage.connection import EmbeddedRedis, connect
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore

REAL_URL = os.environ.get("MEMESYS_TEST_REDIS_URL", "")

# Key prefixes the tests used in the shared Redis: their keys are deleted when the session ends.
SHARED_PREFIXES: set[str] = set()


def shared_prefix(prefix: str) -> str:
    """``prefix``, remembered: its keys in the shared Redis (``MEMESYS_TEST_REDIS_URL``) are
    deleted when the test session ends (not at once: a test may restart a daemon on them)."""
    SHARED_PREFIXES.add(prefix)
    return prefix


@pytest.fixture(scope="session", autouse=True)
def shared_redis_left_clean() -> Iterator[None]:
    """A test run leaves no keys behind in the machine's Redis."""
    yield
    if not REAL_URL or not SHARED_PREFIXES:
        return
    client = connect(REAL_URL)
    try:
        for prefix in SHARED_PREFIXES:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for at in range(0, len(keys), 500):
                client.delete(*keys[at : at + 500])
    finally:
        client.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    if REAL_URL:
        c = connect(REAL_URL)
        yield c
        c.close()
        return
    server = EmbeddedRedis(str(tmp_path_factory.mktemp("redis")))
    c = connect(server.start().url)
    yield c
    c.close()
    server.stop()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    p = f"memesys-test-{uuid.uuid4().hex}"
    yield p
    keys = list(client.scan_iter(match=f"{p}:*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture
def store(client: redis.Redis, prefix: str, tmp_path: Path) -> MemeStore:
    """A MemeStore on ``client`` under the test's own ``prefix``, its PNG files under
    ``tmp_path / "images"``."""
    return MemeStore(client, ImageFiles(tmp_path / "images"), prefix)


def values_under(r: redis.Redis, prefix: str, but: str | None = None) -> bytes:
    """Everything stored under the prefix (except keys under ``but``), as one blob, whatever
    the key types."""
    blob = []
    for key in r.scan_iter(match=f"{prefix}:*", count=500):
        if but is not None and key.decode().startswith(but):
            continue
        kind = r.type(key)
        if kind == b"string":
            blob.append(r.get(key) or b"")
        elif kind == b"set":
            blob += list(r.smembers(key))
        elif kind == b"zset":
            blob += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            blob += r.lrange(key, 0, -1)
        elif kind == b"hash":
            blob += [k + v for k, v in r.hgetall(key).items()]
        elif kind == b"stream":
            blob += [k + v for _, entry in r.xrange(key) for k, v in entry.items()]
        blob.append(key)
    return b"\n".join(blob)
