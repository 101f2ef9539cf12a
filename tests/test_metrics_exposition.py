"""/metrics as a Prometheus user reads it: exact values, escaped labels, ordered cumulative
buckets, the format's content type (prometheus_client writes it)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from memesys.http.metrics import CONTENT_TYPE, LATENCY_BUCKETS_S, Metrics
from tests.support.metrics import sample


def test_values_and_labels_read_back_exactly() -> None:
    metrics = Metrics()
    metrics.counted("memesys_big_total", "a large count", lambda: 12_345_678)
    metrics.count("memesys_odd_total", "odd labels", route='a"b\\c\nd')
    text = metrics.render()
    assert sample(text, "memesys_big_total") == 12_345_678
    assert sample(text, "memesys_odd_total", route='a"b\\c\nd') == 1
    assert "version=0.0.4" in CONTENT_TYPE
    assert "_created" not in text


def test_a_histogram_has_every_bucket_in_order_and_inf_is_its_count() -> None:
    metrics = Metrics()
    for seconds in (0.003, 0.2, 0.2, 40.0):
        metrics.observe("memesys_x_seconds", "latency", seconds, route="/v1/memes")
    (family,) = text_string_to_metric_families(metrics.render())
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    assert [float(s.labels["le"]) for s in buckets] == [*LATENCY_BUCKETS_S, float("inf")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 4
    assert sample(metrics.render(), "memesys_x_seconds_count", route="/v1/memes") == 4
