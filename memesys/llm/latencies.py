"""The provider's latencies as every process saw them, pooled in Redis for the hedging policy
(:mod:`memesys.llm.hedging`): a worker that has just started, or that makes few calls of a
stage (a generator makes one fused call a meme, a verifier four), knows the provider's tail at
once instead of after its own first ``MIN_SAMPLES`` answers.

Keys: ``<key_prefix>:llm:latency/<provider/model>/<stage>`` (and ``.../`` for every stage of
the model), Redis lists of the newest ``SAMPLES_KEPT`` answers in seconds, newest first,
expiring ``TTL_S`` after the last push. A process pushes its new answers and reads the lists it
needs in one pipeline, at most once a second (:data:`memesys.llm.hedging.SHARE_EVERY_S`).
Redis unreachable: each process keeps to its own answers, says so once in a WARNING and tries
again after ``RETRY_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import redis

from memesys.llm.hedging import SAMPLES_KEPT

log = logging.getLogger("memesys.llm")

TTL_S = 24 * 3600  # a provider idle for a day is measured afresh
RETRY_S = 10.0


class SharedLatencies:
    """The pooled latencies of one provider+model (``name``)."""

    def __init__(self, redis_url: str, key_prefix: str, name: str) -> None:
        self.name = name
        self._namespace = f"{key_prefix}:llm:latency/{name}/"
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self._retry_at = 0.0  # monotonic: Redis is not asked before then
        self._warned = False

    def key(self, stage: str) -> str:
        return self._namespace + stage

    def __call__(
        self, fresh: Mapping[str, list[float]], stages: list[str]
    ) -> dict[str, list[float]] | None:
        """Push ``fresh`` (new answers by stage, also pushed to every stage's list ``""``), read
        back the lists of ``stages``, oldest first; None while Redis is unreachable."""
        if time.monotonic() < self._retry_at:
            return None
        every = [seconds for values in fresh.values() for seconds in values]
        pushes = {**fresh, "": every} if every else {}
        try:
            pipe = self._client.pipeline(transaction=False)
            for stage, values in pushes.items():
                if values:
                    key = self.key(stage)
                    pipe.lpush(key, *(f"{seconds:.4f}" for seconds in values))
                    pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
                    pipe.expire(key, TTL_S)
            for stage in stages:
                pipe.lrange(self.key(stage), 0, SAMPLES_KEPT - 1)
            answers = pipe.execute()
        except redis.RedisError as exc:
            self._retry_at = time.monotonic() + RETRY_S
            if not self._warned:
                self._warned = True
                log.warning(
                    "llm hedging %s: Redis unreachable (%s): hedging points from this "
                    "process's own answers until it answers again",
                    self.name,
                    type(exc).__name__,
                )
            return None
        if self._warned:
            self._warned = False
            log.warning("llm hedging %s: Redis answers again: latencies pooled", self.name)
        pooled = answers[len(answers) - len(stages) :]
        return {
            stage: [float(value) for value in reversed(values)]
            for stage, values in zip(stages, pooled)
        }
