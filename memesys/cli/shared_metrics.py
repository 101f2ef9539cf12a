"""The series the gateway reads from Redis at each /metrics: the LLM client layer's counts,
which every worker process adds to (:class:`~memesys.llm.metrics.SharedCounts`), and the task
queue (:class:`~memesys.storage.task_metrics.TaskQueue`)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry, generate_latest

from memesys.llm.metrics import SharedCounts
from memesys.storage.task_metrics import TaskQueue

# A scrape waits for Redis briefly: the gateway also bounds the whole read.
SOCKET_TIMEOUT_S = 0.3


def reader(redis_url: str, key_prefix: str) -> Callable[[], str] | None:
    """What the gateway calls (in a thread) for these series; None without Redis."""
    if not redis_url:
        return None
    client = redis.Redis.from_url(
        redis_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedCounts(client, key_prefix))
    registry.register(TaskQueue(client, key_prefix))
    return lambda: generate_latest(registry).decode()
