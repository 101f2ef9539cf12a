"""The gateway's series, exposed with ``prometheus_client`` (text format 0.0.4).

Counters and histograms are updated as requests are served (:meth:`Metrics.count`,
:meth:`Metrics.observe`); gauges and the counts kept elsewhere (the bridge's, the store's) are
read when /metrics is scraped (:meth:`Metrics.gauge`, :meth:`Metrics.counted`). The library
writes the exposition: buckets in order and cumulative up to ``+Inf`` (= ``_count``), values
in full (no exponent for 12,345,678), label values escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

# The text format every Prometheus reads: generate_latest writes it for these (legacy-valid)
# names; the library's "latest" content type names the newer 1.0.0.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# A ``*_created`` series per counter is noise to this daemon's users: off, once per process.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped


class _ReadAtScrape(Collector):
    """The series whose value is read when /metrics is scraped: gauges, and counts that another
    part of the process keeps (exposed as counters)."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counts: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, help_text, value=read())
        for name, (help_text, read) in sorted(self.counts.items()):
            yield CounterMetricFamily(name, help_text, value=read())


class Metrics:
    """The gateway's series in a registry of its own (one per gateway: tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._read = _ReadAtScrape()
        self.registry.register(self._read)

    def count(self, name: str, help_text: str, **labels: str) -> None:
        """Add 1 to counter ``name`` (``*_total``) for ``labels`` (the same names every time)."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Counter(
                name, help_text, sorted(labels), registry=self.registry
            )
        (counter.labels(**labels) if labels else counter).inc()

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Gauge ``name``, its value ``read()`` at each scrape."""
        self._read.gauges[name] = (help_text, read)

    def counted(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Counter ``name`` (``*_total``) that something else counts, ``read()`` at each scrape."""
        self._read.counts[name] = (help_text, read)

    def observe(self, name: str, help_text: str, seconds: float, **labels: str) -> None:
        """Observe ``seconds`` in histogram ``name`` for ``labels``."""
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = Histogram(
                name, help_text, sorted(labels), registry=self.registry, buckets=LATENCY_BUCKETS_S
            )
        (histogram.labels(**labels) if labels else histogram).observe(seconds)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
