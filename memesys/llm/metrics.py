"""The client layer's metrics, gathered from every worker process through Redis.

LLM calls happen in the generator and verifier processes, /metrics is served by the gateway
process: each process adds its counts to one Redis hash, ``<key_prefix>:llm:metrics`` (HINCRBYFLOAT,
flushed at most once a second by the thread that records, so /metrics lags by up to a second
plus the time to the next call), and writes each breaker's state to
``<key_prefix>:llm:breakers``; the gateway reads both (:func:`render`, a ``prometheus_client``
collector, :class:`SharedCounts`) on every /metrics.
Without Redis nothing is exported (counts stay in the process).

Series (``model`` is ``<host:port>/<model>``):

- ``memesys_llm_calls_total{model,outcome}``: calls by outcome (ok, or the failure's kind:
  server, timeout, connect, malformed, rate_limited, client, open, limited, deadline, budget,
  bulkhead);
- ``memesys_llm_attempts_total{model,outcome}``: attempts sent to the provider by outcome;
- ``memesys_llm_call_seconds{model}``: call latency histogram (whole call: waits, attempts);
- ``memesys_llm_breaker_state{model}`` (0 closed, 1 half-open, 2 open) and
  ``memesys_llm_breaker_transitions_total{model,to}``;
- ``memesys_llm_limiter_waits_total{model}``, ``memesys_llm_limiter_wait_seconds_total{model}``,
  ``memesys_llm_limiter_refusals_total{model}``, ``memesys_llm_limiter_local_total{model}``
  (switches to the local share while Redis is unreachable),
  ``memesys_llm_limiter_lowered_total{model}`` (provider 429s that lowered the shared rate),
  ``memesys_llm_schedule_refusals_total{model,lane}`` (memes refused at admission: their
  calls did not fit the shared schedule; ``lane`` interactive or background);
- ``memesys_llm_tokens_total{model,type}`` (``type``: ``input``, the prompt's, or ``output``,
  the completion's, as OpenTelemetry's ``gen_ai.token.type``),
  ``memesys_llm_cost_usd_total{model}``;
- ``memesys_llm_fallbacks_total{model,to}``;
- ``memesys_llm_hedges_total{model,won}``, ``memesys_llm_hedges_refused_total{model,why}``.

Provider 429s are ``memesys_llm_attempts_total{outcome="rate_limited"}``. Every family of
:data:`HELP` is in every scrape, empty until a process counts in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import cast

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("memesys.llm.metrics")

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_EVERY_S = 1.0
STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

COUNTER, HISTOGRAM = "counter", "histogram"
HELP = {
    "memesys_llm_calls_total": (COUNTER, "LLM calls by outcome"),
    "memesys_llm_attempts_total": (COUNTER, "LLM attempts sent to the provider by outcome"),
    "memesys_llm_call_seconds": (HISTOGRAM, "LLM call latency (waits and attempts)"),
    "memesys_llm_breaker_transitions_total": (COUNTER, "circuit breaker transitions seen"),
    "memesys_llm_limiter_waits_total": (COUNTER, "calls that waited for a rate-limit slot"),
    "memesys_llm_limiter_wait_seconds_total": (COUNTER, "seconds waited for slots"),
    "memesys_llm_limiter_refusals_total": (COUNTER, "calls refused: no slot before the deadline"),
    "memesys_llm_schedule_refusals_total": (
        COUNTER,
        "memes refused at admission: their calls did not fit the shared schedule (none sent)",
    ),
    "memesys_llm_limiter_local_total": (
        COUNTER,
        "switches to the local share (Redis unreachable)",
    ),
    "memesys_llm_limiter_lowered_total": (
        COUNTER,
        "provider 429s that lowered the shared rate of every process",
    ),
    "memesys_llm_tokens_total": (COUNTER, "tokens the provider reported"),
    "memesys_llm_cost_usd_total": (COUNTER, "estimated cost from [llm] prices"),
    "memesys_llm_fallbacks_total": (COUNTER, "calls moved to a fallback model"),
    "memesys_llm_hedges_total": (
        COUNTER,
        "hedged attempts: a second copy of a slow call (won: which copy answered first)",
    ),
    "memesys_llm_hedges_refused_total": (
        COUNTER,
        "hedges not sent (why: budget spent, or no free send time in the schedule)",
    ),
}
# The label names of each family (a family no process has counted yet is shown empty).
LABELS = {
    "memesys_llm_breaker_transitions_total": ("model", "to"),
    "memesys_llm_calls_total": ("model", "outcome"),
    "memesys_llm_attempts_total": ("model", "outcome"),
    "memesys_llm_fallbacks_total": ("model", "to"),
    "memesys_llm_hedges_total": ("model", "won"),
    "memesys_llm_hedges_refused_total": ("model", "why"),
    "memesys_llm_schedule_refusals_total": ("model", "lane"),
    "memesys_llm_tokens_total": ("model", "type"),
}


def _field(name: str, labels: dict[str, str]) -> str:
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Recorder:
    """This process's counts, flushed to Redis."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            if redis_url
            else None
        )
        self.key = f"{key_prefix}:llm:metrics"
        self.states_key = f"{key_prefix}:llm:breakers"
        self._pending: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def add(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._pending[_field(name, labels)] += amount
        self._maybe_flush()

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        with self._lock:
            for bound in BUCKETS_S:
                if seconds <= bound:
                    self._pending[_field(name + "_bucket", {**labels, "le": f"{bound:g}"})] += 1
            self._pending[_field(name + "_bucket", {**labels, "le": "+Inf"})] += 1
            self._pending[_field(name + "_sum", labels)] += seconds
            self._pending[_field(name + "_count", labels)] += 1
        self._maybe_flush()

    def state(self, model: str, state: str) -> None:
        if self._redis is None:
            return
        try:
            self._redis.hset(self.states_key, model, STATE_VALUES.get(state, 0))
        except redis.RedisError:
            pass

    def _maybe_flush(self, force: bool = False) -> None:
        if self._redis is None:
            return
        now = time.monotonic()
        if not force and now - self._flushed < FLUSH_EVERY_S:
            return
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            self._flushed = now
        if not pending:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for field, amount in pending.items():
                pipe.hincrbyfloat(self.key, field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("llm metrics not flushed (Redis unreachable: %s)", exc)
            with self._lock:
                for field, amount in pending.items():
                    self._pending[field] += amount

    def flush(self) -> None:
        self._maybe_flush(force=True)


_recorders: dict[tuple[str, str], Recorder] = {}
_registry_lock = threading.Lock()


def recorder_for(redis_url: str, key_prefix: str) -> Recorder:
    with _registry_lock:
        found = _recorders.get((redis_url, key_prefix))
        if found is None:
            found = _recorders[(redis_url, key_prefix)] = Recorder(redis_url, key_prefix)
        return found


def render(client: redis.Redis | None, key_prefix: str) -> str:
    """The Prometheus text of every process's counts (the gateway's /metrics)."""
    if client is None:
        return ""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedCounts(client, key_prefix))
    return generate_latest(registry).decode()


class SharedCounts(Collector):
    """The families of the counts every process adds to ``<key_prefix>:llm:metrics`` and the
    breakers' states in ``<key_prefix>:llm:breakers``, read at each scrape. A histogram's
    buckets come out in order, each bucket no one has reached as 0 (the recorders only write
    the buckets an observation reached), ``+Inf`` equal to ``_count``. A counter's field with
    other label names than :data:`LABELS` gives it (the hash outlives an upgrade that added a
    label) is left out: one family's series all have the same labels."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client, self.key_prefix = client, key_prefix

    def collect(self) -> Iterator[Metric]:
        # The client never decodes replies: redis-py's ``bytes | str`` is bytes here.
        counts = cast(dict[bytes, bytes], self.client.hgetall(f"{self.key_prefix}:llm:metrics"))
        states = cast(dict[bytes, bytes], self.client.hgetall(f"{self.key_prefix}:llm:breakers"))
        counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        histograms: dict[str, dict[tuple[tuple[str, str], ...], dict[str, float]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        for raw_field, raw_value in counts.items():
            name, _, text = raw_field.decode().partition("|")
            labels = dict(pair.split("=", 1) for pair in text.split(",") if pair)
            value = float(raw_value)
            for part in ("_bucket", "_sum", "_count"):
                if name.endswith(part) and HELP.get(name.removesuffix(part), ("",))[0] == HISTOGRAM:
                    le = labels.pop("le", "")
                    key = tuple(sorted(labels.items()))
                    histograms[name.removesuffix(part)][key][le or part] = value
                    break
            else:
                if sorted(labels) != sorted(LABELS.get(name, ("model",))):
                    continue  # written by a version that labelled it otherwise: not mixed in
                counters[name][tuple(sorted(labels.items()))] = value
        for name, (kind, _) in HELP.items():
            if kind == COUNTER:
                counters.setdefault(name, {})
            else:
                histograms.setdefault(name, defaultdict(dict))
        for name, series in sorted(counters.items()):
            help_text = HELP.get(name, (COUNTER, name))[1]
            counter = CounterMetricFamily(name, help_text, labels=_names(name, series))
            for key, value in sorted(series.items()):
                counter.add_metric([v for _, v in key], value)
            yield counter
        for name, parts_of in sorted(histograms.items()):
            histogram = HistogramMetricFamily(name, HELP[name][1], labels=_names(name, parts_of))
            for key, parts in sorted(parts_of.items()):
                count = parts.get("_count", parts.get("+Inf", 0.0))
                buckets = [(f"{bound:g}", parts.get(f"{bound:g}", 0.0)) for bound in BUCKETS_S]
                histogram.add_metric(
                    [v for _, v in key], [*buckets, ("+Inf", count)], parts.get("_sum", 0.0)
                )
            yield histogram
        if states:
            breakers = GaugeMetricFamily(
                "memesys_llm_breaker_state",
                "circuit breaker state (0 closed, 1 half-open, 2 open)",
                labels=["model"],
            )
            for model, state in sorted(states.items()):
                breakers.add_metric([model.decode()], int(state))
            yield breakers


def _names(family: str, series: Mapping[tuple[tuple[str, str], ...], object]) -> list[str]:
    """The label names of a family's series (every series of a name has the same)."""
    if not series:
        return list(LABELS.get(family, ("model",)))
    return [name for name, _ in next(iter(series))]
