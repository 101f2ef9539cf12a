"""What the hedging policy (:mod:`memesys.llm.hedging`) of every process shares through Redis:
the provider's latencies and the hedge budget, so the policy is the cluster's, not each
process's.

- **Latencies**: a worker that has just started, or that makes few calls of a stage (a
  generator makes one fused call a meme, a verifier four), knows the provider's tail at once
  instead of after its own first ``MIN_SAMPLES`` answers. Keys
  ``<key_prefix>:llm:hedge/<provider/model>/latency/<stage>`` (and ``.../latency/`` for every
  stage of the model): Redis lists of the newest ``SAMPLES_KEPT`` answers in seconds, newest
  first.
- **The budget**: ``<key_prefix>:llm:hedge/<provider/model>/credit``, the hedges the cluster
  may still send: every call adds ``hedge_budget`` of one (up to ``MAX_CREDIT``), a hedge takes
  one. One budget for the provider's calls: a process whose calls need more hedges (a
  verifier's straggler) uses what another's leave (a generator's).

A process pushes its new answers and the credit its calls earned, and reads the lists it needs,
in one pipeline at most once a second (:data:`memesys.llm.hedging.SHARE_EVERY_S`); a hedge
takes its credit in one script. Every key expires ``TTL_S`` after its last write. Redis
unreachable: the process keeps to its own answers and its own credit, says so once in a WARNING
and asks again after ``RETRY_S``.
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
MAX_CREDIT = 10.0  # hedges the cluster may save up: a calm hour buys no burst

# KEYS[1] credit; ARGV[1] earned, ARGV[2] most, ARGV[3] ttl
_EARN = """
local credit = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
credit = math.min(credit, tonumber(ARGV[2]))
redis.call('SET', KEYS[1], tostring(credit), 'EX', tonumber(ARGV[3]))
return tostring(credit)
"""
# KEYS[1] credit: 1 and one hedge taken, or 0 when less than one is left
_SPEND = """
local credit = tonumber(redis.call('GET', KEYS[1]) or '0')
if credit < 1 then return 0 end
redis.call('SET', KEYS[1], tostring(credit - 1), 'KEEPTTL')
return 1
"""


class HedgePool:
    """The shared latencies and hedge budget of one provider+model (``name``)."""

    def __init__(self, redis_url: str, key_prefix: str, name: str) -> None:
        self.name = name
        self._namespace = f"{key_prefix}:llm:hedge/{name}/"
        client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._client = client
        self._earn = client.register_script(_EARN)
        self._spend = client.register_script(_SPEND)
        self._retry_at = 0.0  # monotonic: Redis is not asked before then
        self._warned = False

    def latency_key(self, stage: str) -> str:
        return f"{self._namespace}latency/{stage}"

    @property
    def credit_key(self) -> str:
        return f"{self._namespace}credit"

    def exchange(
        self, fresh: Mapping[str, list[float]], stages: list[str], earned: float
    ) -> dict[str, list[float]] | None:
        """Push ``fresh`` (new answers by stage, also pushed to every stage's list ``""``) and
        the ``earned`` credit, read back the lists of ``stages``, oldest first; None while
        Redis is unreachable (nothing was pushed: the caller keeps its answers and credit)."""
        if not self._reachable():
            return None
        every = [seconds for values in fresh.values() for seconds in values]
        pushes = {**fresh, "": every} if every else {}
        try:
            pipe = self._client.pipeline(transaction=False)
            for stage, values in pushes.items():
                if values:
                    key = self.latency_key(stage)
                    pipe.lpush(key, *(f"{seconds:.4f}" for seconds in values))
                    pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
                    pipe.expire(key, TTL_S)
            if earned > 0:
                self._earn(keys=[self.credit_key], args=[earned, MAX_CREDIT, TTL_S], client=pipe)
            for stage in stages:
                pipe.lrange(self.latency_key(stage), 0, SAMPLES_KEPT - 1)
            answers = pipe.execute()
        except redis.RedisError as exc:
            self._unreachable(exc)
            return None
        self._answered()
        pooled = answers[len(answers) - len(stages) :]
        return {
            stage: [float(value) for value in reversed(values)]
            for stage, values in zip(stages, pooled)
        }

    def spend(self) -> bool | None:
        """Take one hedge from the cluster's budget: whether one was left; None while Redis is
        unreachable (the caller spends its own)."""
        if not self._reachable():
            return None
        try:
            taken = self._spend(keys=[self.credit_key])
        except redis.RedisError as exc:
            self._unreachable(exc)
            return None
        self._answered()
        return bool(taken)

    def _reachable(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _unreachable(self, exc: redis.RedisError) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if not self._warned:
            self._warned = True
            log.warning(
                "llm hedging %s: Redis unreachable (%s): this process hedges on its own "
                "answers and budget until it answers again",
                self.name,
                type(exc).__name__,
            )

    def _answered(self) -> None:
        if self._warned:
            self._warned = False
            log.warning(
                "llm hedging %s: Redis answers again: latencies and budget pooled", self.name
            )
