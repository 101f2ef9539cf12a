"""The live figures of ``memesys-admin stats`` from two literal /metrics texts: rates over the
window, quantiles from histogram buckets, the hit rate, breaker names, the tree's troubles."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from memesys.cli.live_figures import figures, lines, quantile, samples_of
from memesys.cli.metrics_scrape import ScrapeError, gateway_url, scrape
from memesys.config import load


def parsed(text: str):
    return samples_of(text_string_to_metric_families(text))


def meme_seconds(cached: str, counts: list[int]) -> str:
    """A histogram's buckets at 0.1, 0.5, 1, +Inf (cumulative counts given)."""
    rows = [
        f'memesys_meme_seconds_bucket{{cached="{cached}",engine="actors",le="{le}"}} {c}'
        for le, c in zip(("0.1", "0.5", "1.0", "+Inf"), counts)
    ]
    rows.append(f'memesys_meme_seconds_count{{cached="{cached}",engine="actors"}} {counts[-1]}')
    return "\n".join(rows)


def scrape_text(made: int, cached: int, hits: int, misses: int, buckets: list[int]) -> str:
    return f"""# TYPE memesys_tree_status_read gauge
memesys_tree_status_read 1.0
# TYPE memesys_redis_series_read gauge
memesys_redis_series_read 1.0
# TYPE memesys_memes_total counter
memesys_memes_total{{cached="false",engine="actors"}} {made}
memesys_memes_total{{cached="true",engine="actors"}} {cached}
# TYPE memesys_meme_seconds histogram
{meme_seconds("false", buckets)}
{meme_seconds("true", [0, 0, 0, 0])}
# TYPE memesys_memes_failed_total counter
memesys_memes_failed_total{{code="timeout",engine="actors"}} 2.0
memesys_memes_failed_total{{code="llm_unavailable",engine="actors"}} 0.0
# TYPE memesys_cache_hits_total counter
memesys_cache_hits_total {hits}
# TYPE memesys_cache_misses_total counter
memesys_cache_misses_total {misses}
# TYPE memesys_llm_calls_total counter
memesys_llm_calls_total{{model="127.0.0.1:9/m",outcome="ok"}} 7.0
memesys_llm_calls_total{{model="127.0.0.1:9/n",outcome="ok"}} 3.0
memesys_llm_calls_total{{model="127.0.0.1:9/m",outcome="timeout"}} 1.0
# TYPE memesys_llm_attempts_total counter
memesys_llm_attempts_total{{model="127.0.0.1:9/m",outcome="ok"}} 10.0
memesys_llm_attempts_total{{model="127.0.0.1:9/m",outcome="rate_limited"}} 4.0
# TYPE memesys_llm_tokens_total counter
memesys_llm_tokens_total{{model="127.0.0.1:9/m",type="input"}} 1200.0
memesys_llm_tokens_total{{model="127.0.0.1:9/m",type="output"}} 30.0
memesys_llm_tokens_total{{model="127.0.0.1:9/n",type="output"}} 4.0
# TYPE memesys_llm_cost_usd_total counter
memesys_llm_cost_usd_total{{model="127.0.0.1:9/m"}} 0.0125
# TYPE memesys_llm_hedges_total counter
memesys_llm_hedges_total{{model="127.0.0.1:9/m",won="hedge"}} 2.0
# TYPE memesys_llm_breaker_state gauge
memesys_llm_breaker_state{{model="127.0.0.1:9/m"}} 2.0
memesys_llm_breaker_state{{model="127.0.0.1:9/n"}} 0.0
memesys_llm_breaker_state{{model="127.0.0.1:9/o"}} 1.0
# TYPE memesys_actor_restarts_total counter
memesys_actor_restarts_total{{child="generator",supervisor="memesys"}} 1.0
memesys_actor_restarts_total{{child="worker-0",supervisor="memesys/generator"}} 3.0
memesys_actor_restarts_total{{child="worker-1",supervisor="memesys/generator"}} 0.0
# TYPE memesys_actor_health_kills_total counter
memesys_actor_health_kills_total{{child="worker-0",supervisor="memesys/generator"}} 1.0
# TYPE memesys_actor_escalations_total counter
memesys_actor_escalations_total{{child="generator",supervisor="memesys"}} 1.0
# TYPE memesys_actor_up gauge
memesys_actor_up{{child="generator",supervisor="memesys"}} 1.0
memesys_actor_up{{child="worker-0",supervisor="memesys/generator"}} 0.0
memesys_actor_up{{child="worker-1",supervisor="memesys/generator"}} 1.0
# TYPE memesys_pool_in_flight gauge
memesys_pool_in_flight{{pool="memesys/generator"}} 3.0
# TYPE memesys_pool_queued gauge
memesys_pool_queued{{pool="memesys/generator"}} 1.0
# TYPE memesys_eventlog_pending_events gauge
memesys_eventlog_pending_events{{child="worker-0",supervisor="memesys/generator"}} 4.0
memesys_eventlog_pending_events{{child="worker-1",supervisor="memesys/generator"}} 1.0
# TYPE memesys_eventlog_pending_age_seconds gauge
memesys_eventlog_pending_age_seconds{{child="worker-0",supervisor="memesys/generator"}} 0.5
memesys_eventlog_pending_age_seconds{{child="worker-1",supervisor="memesys/generator"}} 1.25
# TYPE memesys_task_queue_depth gauge
memesys_task_queue_depth 5.0
# TYPE memesys_tasks_running gauge
memesys_tasks_running 2.0
# TYPE memesys_task_queue_oldest_age_seconds gauge
memesys_task_queue_oldest_age_seconds 12.34
"""


BEFORE = parsed(scrape_text(made=10, cached=1, hits=3, misses=10, buckets=[4, 9, 10, 10]))
AFTER = parsed(scrape_text(made=14, cached=2, hits=6, misses=14, buckets=[4, 9, 12, 14]))


def test_memes_per_second_and_the_cache_over_the_window() -> None:
    memes = figures(BEFORE, AFTER, 2.0)["memes"]
    # 4 made, 1 cached by the engine and 3 gateway hits in 2 s.
    assert (memes["per_s"], memes["made_per_s"], memes["cached_per_s"]) == (4.0, 2.0, 2.0)
    assert memes["answered"] == 14 + 2 + 6
    assert memes["failed"] == {"timeout": 2}  # zeros left out


def test_quantiles_come_from_the_window_buckets_when_it_saw_memes() -> None:
    memes = figures(BEFORE, AFTER, 2.0)["memes"]
    # The window's 4 memes: 2 in (0.5, 1], 2 above 1 s. p50 ranks 2: the top of (0.5, 1];
    # p95 ranks 3.8, in +Inf: the highest finite bound.
    assert (memes["p50_s"], memes["p95_s"], memes["since"]) == (1.0, 1.0, "window")
    # Since start: 14 memes; p50 ranks 7 in (0.1, 0.5] holding 5 from 4: 0.1 + 0.4 * 3/5.
    still = figures(AFTER, AFTER, 2.0)["memes"]
    assert (still["p50_s"], still["since"], still["per_s"]) == (0.34, "start", 0.0)


def test_no_memes_at_all_has_no_quantiles() -> None:
    empty = parsed(scrape_text(made=0, cached=0, hits=0, misses=0, buckets=[0, 0, 0, 0]))
    found = figures(empty, empty, 1.0)
    assert (found["memes"]["p50_s"], found["memes"]["since"]) == (None, None)
    assert found["cache"]["hit_rate"] is None
    assert "no meme made yet" in "\n".join(lines(found))


@pytest.mark.parametrize(
    "q, cumulative, expected",
    [
        (0.5, {0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}, 0.05),  # the first bucket from 0
        (0.5, {0.1: 0.0, 1.0: 10.0, float("inf"): 10.0}, 0.55),
        (0.95, {0.1: 0.0, 1.0: 0.0, float("inf"): 5.0}, 1.0),
        (0.5, {0.1: 0.0, float("inf"): 0.0}, None),
    ],
)
def test_quantile_interpolates_like_prometheus(q, cumulative, expected) -> None:
    found = quantile(q, cumulative)
    assert found == expected if expected is None else found == pytest.approx(expected)


def test_a_counter_reset_counts_from_zero() -> None:
    later = parsed(scrape_text(made=3, cached=0, hits=0, misses=0, buckets=[1, 3, 3, 3]))
    memes = figures(AFTER, later, 1.0)["memes"]
    assert memes["made_per_s"] == 3.0 and memes["since"] == "window"


def test_cache_llm_and_breakers() -> None:
    found = figures(BEFORE, AFTER, 2.0)
    assert found["cache"] == {"hits": 6, "misses": 14, "hit_rate": 0.3}
    assert found["llm"] == {
        "calls": {"ok": 10, "timeout": 1},
        "attempts": {"ok": 10, "rate_limited": 4},
        "tokens_in": 1200,
        "tokens_out": 34,
        "cost_usd": 0.0125,
        "hedges": 2,
        "rate_limited": 4,
        "breakers": {
            "127.0.0.1:9/m": "open",
            "127.0.0.1:9/n": "closed",
            "127.0.0.1:9/o": "half-open",
        },
    }


def test_tree_tasks_and_event_log() -> None:
    found = figures(BEFORE, AFTER, 2.0)
    assert found["tree"] == {
        "restarts": 4,
        "troubled": {
            "memesys/generator": {"restarts": 1, "escalations": 1},
            "memesys/generator/worker-0": {"restarts": 3, "health_kills": 1},
        },
        "actors_up": 2,
        "actors": 3,
        "pools": {"memesys/generator": {"in_flight": 3, "queued": 1}},
    }
    assert found["tasks"] == {"queued": 5, "running": 2, "oldest_age_s": 12.3}
    assert found["eventlog"] == {"pending_events": 5, "oldest_age_s": 1.25}


def test_unread_parts_are_absent_not_zero() -> None:
    text = scrape_text(made=1, cached=0, hits=0, misses=0, buckets=[1, 1, 1, 1])
    unread = parsed(
        text.replace("memesys_tree_status_read 1.0", "memesys_tree_status_read 0.0").replace(
            "memesys_redis_series_read 1.0", "memesys_redis_series_read 0.0"
        )
    )
    found = figures(unread, unread, 1.0)
    assert (found["tree"], found["llm"], found["tasks"], found["eventlog"]) == (None,) * 4
    shown = "\n".join(lines(found))
    assert "the root did not answer" in shown and "Redis did not answer" in shown


def test_the_table_names_every_figure() -> None:
    shown = "\n".join(lines(figures(BEFORE, AFTER, 2.0)))
    for expected in (
        "memes/s          4.0 (made 2.0, cached 2.0); 22 answered since start",
        "p50 1.000 s, p95 1.000 s (memes made over the window)",
        "hit rate 30.0% (6 hits, 14 misses)",
        "provider 429s 4",
        "llm tokens       1200 in, 34 out",
        "llm cost         $0.0125, hedges 2",
        "127.0.0.1:9/m open",
        "memesys/generator/worker-0 restarts 3, health_kills 1",
        "actors up        2 of 3",
        "memesys/generator 3 in flight, 1 queued",
        "5 queued, 2 running, oldest 12.3 s",
    ):
        assert expected in shown


@pytest.mark.parametrize(
    "host, url",
    [
        ("127.0.0.1", "http://127.0.0.1:8123"),
        ("0.0.0.0", "http://127.0.0.1:8123"),
        ("::", "http://[::1]:8123"),
        ("localhost", "http://localhost:8123"),
    ],
)
def test_the_gateway_is_asked_where_the_configuration_puts_it(host, url) -> None:
    cfg = load(None, overrides={("gateway", "host"): host, ("gateway", "port"): 8123})
    assert gateway_url(cfg.gateway) == url


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://127.0.0.1:1", "x", "http://"])
def test_a_url_that_is_not_http_is_said_so(url) -> None:
    with pytest.raises(ScrapeError, match="must be http"):
        scrape(url, None)


def test_no_breaker_written_means_none_left_closed() -> None:
    text = scrape_text(made=1, cached=0, hits=0, misses=0, buckets=[1, 1, 1, 1])
    unwritten = parsed("\n".join(r for r in text.splitlines() if "breaker_state" not in r))
    found = figures(unwritten, unwritten, 1.0)
    assert found["llm"]["breakers"] == {}
    assert "breakers         all closed (none has changed)" in lines(found)
