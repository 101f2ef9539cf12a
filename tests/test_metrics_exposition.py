"""/metrics as a Prometheus user reads it: exact values, escaped labels, ordered cumulative
buckets, the format's content type (prometheus_client writes it); the whole tree in one scrape
(restarts, escalations, health-check kills, pools, the task queue, the LLM scheduler, the
event log's lag), and a SIGKILLed worker's restart where an operator reads it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from actors.messages import ChildStatus, TreeStatus
from memesys.domain.gauges import EVENTLOG_PENDING_EVENTS
from memesys.http.metrics import CONTENT_TYPE, LATENCY_BUCKETS_S, Metrics
from memesys.http.tree_metrics import TreeSeries, troubles
from memesys.storage.journal import backlog
from memesys.storage.task_metrics import TaskQueue
from memesys.storage.tasks import TaskStore
from memesys.testing.fake_openai import FakeConfig
from tests.support.daemon import DaemonProcess, child, tree, wait_task
from tests.support.metrics import sample
from tests.support.provider import fake_provider_fixture, provider_env
from tests.support.timing import wait_for


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


# -- the tree's series, from one status answer --------------------------------------------


def _node(name: str, kind: str = "worker", state: str = "running", **kw: object) -> ChildStatus:
    fields: dict = {"pid": 1, "restarts": 0, "started_at": 0.0, "restart_type": "permanent"}
    return ChildStatus(name, kind, state, **{**fields, **kw})


TREE = TreeStatus(
    "memesys",
    "rest_for_one",
    (
        _node(
            "generator",
            "pool",
            restarts=1,
            in_flight=5,
            queued=2,
            children=(
                _node(
                    "worker-0",
                    restarts=3,
                    health_kills=1,
                    in_flight=3,
                    gauges=((EVENTLOG_PENDING_EVENTS, 4.0),),
                ),
                _node("worker-1", state="restarting", last_exit="exited abnormally"),
            ),
        ),
        _node("tasks", "supervisor", state="dead", escalations=1, last_exit="escalated: why"),
        _node("once", state="stopped", last_exit="exited abnormally"),  # a transient one, done
    ),
    in_flight=5,
)


def test_the_tree_status_becomes_the_restart_counters_and_the_pools_gauges() -> None:
    metrics = Metrics()
    series = TreeSeries()
    metrics.registry.register(series)
    series.tree = TREE
    text = metrics.render()
    at = {"supervisor": "memesys/generator", "child": "worker-0"}
    assert sample(text, "memesys_tree_status_read") == 1
    assert sample(text, "memesys_actor_restarts_total", **at) == 3
    assert sample(text, "memesys_actor_health_kills_total", **at) == 1
    assert sample(text, "memesys_actor_escalations_total", supervisor="memesys", child="tasks") == 1
    assert sample(text, "memesys_actor_up", supervisor="memesys/generator", child="worker-1") == 0
    assert sample(text, "memesys_pool_in_flight", pool="memesys/generator") == 3
    assert sample(text, "memesys_pool_queued", pool="memesys/generator") == 2
    assert sample(text, EVENTLOG_PENDING_EVENTS, **at) == 4
    series.tree = None  # the root did not answer: marked, and no stale counts shown
    text = metrics.render()
    assert sample(text, "memesys_tree_status_read") == 0
    assert sample(text, "memesys_actor_restarts_total", **at) is None


def test_the_troubles_are_the_topmost_sub_trees_that_do_not_run_and_why() -> None:
    assert troubles(TREE) == [
        {
            "path": "memesys/generator/worker-1",
            "state": "restarting",
            "reason": "exited abnormally",
        },
        {"path": "memesys/tasks", "state": "dead", "reason": "escalated: why"},
    ]


# -- the task queue and the event log's lag, where they are kept --------------------------


def _task(task_id: str, status: str, age_s: float) -> dict:
    created = time.time() - age_s
    return {
        "id": task_id,
        "status": status,
        "stage": "queued",
        "progress": 0.0,
        "request": {"topic": "a topic"},
        "created_at": created,
        "updated_at": created,
    }


@pytest.mark.store
def test_the_task_queue_is_read_from_the_open_tasks(client: redis.Redis, prefix: str) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskQueue(client, prefix))
    empty = generate_latest(registry).decode()
    assert sample(empty, "memesys_task_queue_depth") == 0
    assert sample(empty, "memesys_task_queue_oldest_age_seconds") == 0
    tasks = TaskStore(client, prefix, ttl_s=600)
    for task in (_task("q1", "queued", 30), _task("q2", "queued", 5), _task("r1", "running", 60)):
        tasks.put(task)
    tasks.put({**_task("s1", "queued", 90), "status": "succeeded"})  # finished: not open
    text = generate_latest(registry).decode()
    assert sample(text, "memesys_task_queue_depth") == 2
    assert sample(text, "memesys_tasks_running") == 1
    assert 30 <= sample(text, "memesys_task_queue_oldest_age_seconds") < 60


@pytest.mark.store
async def test_the_event_logs_lag_is_the_events_recorded_and_not_yet_appended(store) -> None:
    release = asyncio.Event()

    async def slow(append):  # Redis answering slowly: the appends wait
        await release.wait()
        return await asyncio.to_thread(append)

    journal = store.journal("m-lag", "corr", "trace", run=slow)
    journal.record("requested", {"n": 1})
    journal.record("format_chosen", {"n": 2})
    await asyncio.sleep(0.05)
    events, oldest_s = backlog()
    assert events == 2 and oldest_s >= 0.05
    release.set()
    await journal.settled()
    assert backlog() == (0, 0.0) and journal.version == 2

    async def down(append):
        raise redis.ConnectionError("refused")

    failing = store.journal("m-down", "corr", "trace", run=down)
    failing.record("requested", {"n": 1})
    await failing.settled()  # the append failed: its events are dropped, not waiting
    assert backlog() == (0, 0.0)


# -- the daemon's /metrics ----------------------------------------------------------------

# Every series issue 18 names, by family name as the parser gives it (a counter's without
# ``_total``); the families kept in Redis are there (perhaps empty) even before anything counts.
NAMED = {
    "memesys_actor_restarts": "counter",
    "memesys_actor_escalations": "counter",
    "memesys_actor_health_kills": "counter",
    "memesys_pool_in_flight": "gauge",
    "memesys_pool_queued": "gauge",
    "memesys_cache_hits": "counter",
    "memesys_cache_misses": "counter",
    "memesys_task_queue_depth": "gauge",
    "memesys_task_queue_oldest_age_seconds": "gauge",
    "memesys_llm_limiter_waits": "counter",
    "memesys_llm_limiter_refusals": "counter",
    "memesys_llm_schedule_refusals": "counter",
    "memesys_llm_hedges": "counter",
    "memesys_llm_hedges_refused": "counter",
    "memesys_llm_attempts": "counter",  # provider 429s: outcome="rate_limited"
    "memesys_eventlog_pending_events": "gauge",
    "memesys_eventlog_pending_age_seconds": "gauge",
    "memesys_projections_behind": "gauge",
}
POOLS = ("memesys/store", "memesys/render", "memesys/verify", "memesys/generator")

# Every 3rd provider call answers 429 (retried after 50 ms): the 429s are counted.
fake = fake_provider_fixture(FakeConfig(fail_status=429, fail_every=3, retry_after_s=0.05))


@pytest.mark.slow
@pytest.mark.store
def test_metrics_after_a_short_load_parse_and_hold_every_named_series(tmp_path, fake) -> None:
    daemon = DaemonProcess(tmp_path, provider_env(fake)).start()
    try:
        began = time.monotonic()
        for n in range(4):  # each worker adds its LLM counts to Redis once a second
            status, _, body = daemon.request("POST", "/v1/memes", {"topic": f"load {n}"})
            assert status == 201, body
        if time.monotonic() - began < 1.5:
            time.sleep(1.5 - (time.monotonic() - began))
        daemon.request("POST", "/v1/memes", {"topic": "flushed", "fresh": True})
        status, _, body = daemon.request("POST", "/v1/memes", {"topic": "load 0"})
        assert status == 201 and json.loads(body)["cached"], body
        status, task = daemon.json("POST", "/v1/memes?async=true", {"topic": "a task"})
        assert status == 202, task
        wait_task(daemon, task["task_id"])
        status, headers, body = daemon.request("GET", "/metrics")
    finally:
        assert daemon.stop() == []
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    text = body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    missing = {name for name, kind in NAMED.items() if families.get(name, None) is None}
    assert not missing, missing
    assert {name: families[name].type for name in NAMED} == NAMED
    assert sample(text, "memesys_tree_status_read") == 1
    assert sample(text, "memesys_redis_series_read") == 1
    assert sample(text, "memesys_cache_hits_total") >= 1  # the same topic again
    assert sample(text, "memesys_cache_misses_total") >= 1
    generator = {"supervisor": "memesys", "child": "generator"}
    assert sample(text, "memesys_actor_restarts_total", **generator) == 0
    for pool in POOLS:
        assert sample(text, "memesys_pool_queued", pool=pool) == 0
        assert sample(text, "memesys_pool_in_flight", pool=pool) is not None
    assert sample(text, "memesys_task_queue_depth") == 0  # the task has succeeded
    assert sample(text, "memesys_task_queue_oldest_age_seconds") == 0
    worker = {"supervisor": "memesys/generator", "child": "worker-0"}
    assert sample(text, "memesys_eventlog_pending_events", **worker) == 0
    projector = {"supervisor": "memesys", "child": "projector"}
    assert sample(text, "memesys_projections_behind", **projector) == 0  # caught up at start
    rate_limited = [
        s
        for s in families["memesys_llm_attempts"].samples
        if s.labels.get("outcome") == "rate_limited"
    ]
    assert rate_limited and all(s.value >= 1 for s in rate_limited), rate_limited
    histograms = [f for f in families.values() if f.type == "histogram"]
    assert {"memesys_meme_seconds", "memesys_llm_call_seconds"} <= {f.name for f in histograms}
    for family in histograms:
        _assert_cumulative(family)


def _assert_cumulative(family: Metric) -> None:
    """Each series' buckets ascend by bound, their counts never fall, +Inf equals _count."""
    by_series: dict[tuple, list] = {}
    counts: dict[tuple, float] = {}
    for s in family.samples:
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name.endswith("_bucket"):
            by_series.setdefault(labels, []).append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            counts[labels] = s.value
    assert by_series, family.name
    for labels, buckets in by_series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), (family.name, bounds)
        values = [v for _, v in buckets]
        assert values == sorted(values), (family.name, labels, values)
        assert values[-1] == counts[labels], (family.name, labels)


# -- a worker's restart, counted where the operator reads it ------------------------------

BACKOFF_S = 10.0  # the killed worker waits this long before it starts again: read meanwhile


@pytest.mark.slow
@pytest.mark.store
def test_a_sigkilled_worker_is_counted_in_metrics_admin_status_and_named_by_readyz(tmp_path):
    daemon = DaemonProcess(
        tmp_path,
        {
            "MEMESYS_SUPERVISION_BACKOFF_INITIAL_S": str(BACKOFF_S),
            "MEMESYS_SUPERVISION_BACKOFF_MAX_S": str(BACKOFF_S),
            "MEMESYS_SUPERVISION_BACKOFF_JITTER": "0",
        },
    ).start()
    at = {"supervisor": "memesys/generator", "child": "worker-0"}
    try:
        before = child(tree(daemon), "generator", "worker-0")
        assert before["restarts"] == 0 and before["last_exit"] == ""
        os.kill(before["pid"], signal.SIGKILL)
        down = wait_for(
            lambda: (n := child(tree(daemon), "generator", "worker-0"))["restarts"] == 1 and n,
            10,
            what="the supervisor to count the restart",
            interval=0.2,
        )
        assert down["state"] == "restarting" and down["last_exit"] == "exited abnormally", down
        text = daemon.request("GET", "/metrics")[2].decode()
        assert sample(text, "memesys_actor_restarts_total", **at) == 1
        assert sample(text, "memesys_actor_up", **at) == 0
        status, ready = daemon.json("GET", "/readyz")
        assert status == 200, ready  # the pool's other worker serves
        assert {
            "path": "memesys/generator/worker-0",
            "state": "restarting",
            "reason": "exited abnormally",
        } in ready["subtrees"], ready
        back = wait_for(
            lambda: (n := child(tree(daemon), "generator", "worker-0"))["state"] == "running" and n,
            BACKOFF_S + 20,
            what="the worker to be back",
            interval=0.5,
        )
        assert back["restarts"] == 1 and back["pid"] != before["pid"]
        text = daemon.request("GET", "/metrics")[2].decode()
        assert sample(text, "memesys_actor_restarts_total", **at) == 1
        assert sample(text, "memesys_actor_up", **at) == 1
        assert daemon.json("GET", "/readyz")[1]["subtrees"] == []
    finally:
        assert daemon.stop() == []
