"""The task queue's series, read from Redis at each /metrics (a ``prometheus_client``
collector): the open tasks by status and the age of the oldest one still queued.

The queue is the set of open tasks (``{p}:tasks:open``) and their records: the ledger leases
queued ones as the runner has room. Reading it costs one SMEMBERS and one MGET per
:data:`CHUNK` open tasks, done in the gateway's thread within the scrape's bound. A member
whose record is gone or unreadable is not counted (the ledger drops or quarantines it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import cast

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memesys.storage.projections import Keys

CHUNK = 500

DEPTH = ("memesys_task_queue_depth", "asynchronous tasks accepted and waiting to run")
RUNNING = ("memesys_tasks_running", "asynchronous tasks running")
OLDEST = (
    "memesys_task_queue_oldest_age_seconds",
    "seconds since the oldest waiting task was accepted (0: none waits)",
)


class TaskQueue(Collector):
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client, self.keys = client, Keys(key_prefix)

    def collect(self) -> Iterator[Metric]:
        members = sorted(cast(set[bytes], self.client.smembers(self.keys.open_tasks)))
        queued, running, oldest = 0, 0, None
        for start in range(0, len(members), CHUNK):
            keys = [
                self.keys.task(m.decode(errors="replace")) for m in members[start : start + CHUNK]
            ]
            for raw in cast(list[bytes | None], self.client.mget(keys)):
                if raw is None:
                    continue  # expired since the SMEMBERS
                try:
                    task = json.loads(raw)
                    status, created = task["status"], float(task["created_at"])
                except (ValueError, TypeError, KeyError):
                    continue
                if status == "running":
                    running += 1
                elif status == "queued":
                    queued += 1
                    oldest = created if oldest is None else min(oldest, created)
        yield GaugeMetricFamily(*DEPTH, value=queued)
        yield GaugeMetricFamily(*RUNNING, value=running)
        yield GaugeMetricFamily(
            *OLDEST, value=0.0 if oldest is None else max(0.0, time.time() - oldest)
        )
