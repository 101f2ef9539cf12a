"""A module-scoped Redis client for store tests: the server named by MEMESYS_TEST_REDIS_URL
(CI's Redis service), else an embedded redis-server of the module's own; registered for every
test module by ``pytest_plugins`` in tests/conftest.py."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from memesys.storage.connection import EmbeddedRedis, connect

REAL_URL = os.environ.get("MEMESYS_TEST_REDIS_URL", "")


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
