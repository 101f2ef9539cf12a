"""MemeStore and EmbeddedRedis against a real redis-server.

By default every module run starts an embedded server under tmp_path; with
MEMESYS_TEST_REDIS_URL set the store tests use that server instead, each under a random key
prefix that is scanned and deleted afterwards (the server may be shared, so no FLUSHDB).
Tests of EmbeddedRedis itself always start their own embedded server.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from memesys.storage.availability import Availability
from memesys.storage.connection import (
    EmbeddedRedis,
    RedisTarget,
    connect,
    probe_client,
    resolve,
)
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore, StoreDown, StoreError
from memesys.storage.sealing import Shredded
from tests.support.records import PNG, meme
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.store


def keys_of(store: MemeStore, client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=f"{store._p}:*", count=500)}


def test_save_get_roundtrip(store: MemeStore) -> None:
    m = meme("abc-1_X", 1700000000.25, caption="Ünïcode “quotes” 🐸", nested={"a": [1, 2]})
    store.save(m, PNG)
    assert store.get("abc-1_X") == m
    assert store.image("abc-1_X").png == PNG
    assert store.get("missing") is None
    assert store.image("missing") is None
    assert store.answers() is True


def test_list_newest_first_paginates_stably(store: MemeStore) -> None:
    # Two ties in created_at exercise the (score, id) cursor.
    times = [100.0, 101.0, 102.0, 102.0, 103.5, 104.0, 105.0, 105.0]
    for n, t in enumerate(times):
        store.save(meme(f"m{n}", t), PNG)
    expected = [m["id"] for m in store.list(limit=100)[0]]
    assert expected == ["m7", "m6", "m5", "m4", "m3", "m2", "m1", "m0"]

    page1, cursor = store.list(limit=3)
    store.save(meme("newest", 200.0), PNG)  # arrives between pages
    page2, cursor2 = store.list(limit=3, cursor=cursor)
    page3, cursor3 = store.list(limit=3, cursor=cursor2)
    seen = [m["id"] for m in page1 + page2 + page3]
    assert [len(page1), len(page2), len(page3)] == [3, 3, 2]
    assert seen == expected
    assert cursor3 is None
    assert store.list(limit=3)[0][0]["id"] == "newest"
    # A page that ends exactly at the last meme has no next cursor.
    assert store.list(limit=9)[1] is None


def test_list_rejects_forged_cursor(store: MemeStore) -> None:
    for bad in ["", "!!!", "bm90LWEtY3Vyc29y", "MHgxLjBwKzB8Li4vZXRj"]:
        with pytest.raises(ValueError):
            store.list(cursor=bad)


def test_list_empty(store: MemeStore) -> None:
    assert store.list() == ([], None)


def test_delete_erases_everything_including_cache(store: MemeStore, client: redis.Redis) -> None:
    store.save(meme("gone", 1.0), PNG)
    store.save(meme("kept", 2.0), PNG)
    store.cache_put("cats", "gone", 60)
    store.cache_put("dogs", "gone", 60)
    store.cache_put("birds", "kept", 60)
    assert store.cache_get("cats") == "gone"

    assert store.delete("gone") is True
    assert store.get("gone") is None
    assert store.image("gone") is None
    assert [m["id"] for m in store.list()[0]] == ["kept"]
    assert store.cache_get("cats") is None
    assert store.cache_get("dogs") is None
    assert store.cache_get("birds") == "kept"
    p = store._p
    # only its stream in the log is left: erased, every personal field sealed with a key
    # that no longer exists
    assert {k for k in keys_of(store, client) if "gone" in k} == {f"{p}:events:meme:gone"}
    history = [r.event.type for r in store.log.history("meme:gone")]
    assert history == ["completed", "cached", "cached", "erased"]
    raw = b"".join(
        v for _, fields in client.xrange(f"{p}:events:meme:gone") for v in fields.values()
    )
    assert b"topic gone" not in raw and b"topic gone" not in client.dump(f"{p}:events:all")
    with pytest.raises(Shredded):
        store.sealer.open("meme:gone", store.log.history("meme:gone")[0].event.sealed)
    assert len([k for k in keys_of(store, client) if k.startswith(f"{p}:cache:")]) == 1
    assert store.delete("gone") is False


def test_delete_keeps_cache_key_repointed_to_another_meme(store: MemeStore) -> None:
    store.save(meme("a", 1.0), PNG)
    store.save(meme("b", 2.0), PNG)
    store.cache_put("topic", "a", 60)
    store.cache_put("topic", "b", 60)
    assert store.delete("a") is True
    assert store.cache_get("topic") == "b"


def test_cache_get_of_deleted_meme_is_none(store: MemeStore, client: redis.Redis) -> None:
    store.save(meme("x", 1.0), PNG)
    store.cache_put("k", "x", 60)
    # The record vanishing behind the store's back (not via delete) must not resurrect it.
    client.delete(f"{store._p}:meme:x")
    assert store.cache_get("k") is None
    store.cache_put("k2", "never-saved", 60)
    assert store.cache_get("k2") is None
    assert store.cache_get("unknown") is None


def test_cache_entries_expire(store: MemeStore, client: redis.Redis) -> None:
    store.save(meme("x", 1.0), PNG)
    store.cache_put("k", "x", 1)
    assert 0 < client.ttl(f"{store._p}:cachedby:x") <= 1
    store.cache_put("k", "x", 120)
    assert client.ttl(f"{store._p}:cachedby:x") > 60


@pytest.mark.parametrize("bad", ["", "a" * 65, "../x", "a:b", "a*", "ä", "a b", "x\n"])
def test_invalid_ids_are_not_found(store: MemeStore, client: redis.Redis, bad: str) -> None:
    assert store.get(bad) is None
    assert store.image(bad) is None
    assert store.delete(bad) is False
    with pytest.raises(ValueError):
        store.save(meme(bad, 1.0), PNG)
    with pytest.raises(ValueError):
        store.cache_put("k", bad, 60)
    assert keys_of(store, client) == set()


def test_save_validates_created_at(store: MemeStore) -> None:
    for created_at in [None, "1", True, float("nan"), float("inf")]:
        with pytest.raises(ValueError):
            store.save({"id": "ok", "created_at": created_at}, PNG)


def test_embedded_persists_across_restart(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    first = EmbeddedRedis(data_dir)
    store = MemeStore(connect(first.start().url), ImageFiles(tmp_path / "images"))
    store.save(meme("kept", 5.0), PNG)
    first.stop()

    second = EmbeddedRedis(data_dir)
    try:
        store = MemeStore(connect(second.start().url), ImageFiles(tmp_path / "images"))
        assert store.get("kept") == meme("kept", 5.0)
        assert store.image("kept").png == PNG
    finally:
        second.stop()


def test_embedded_aof_survives_a_killed_server(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    first = EmbeddedRedis(data_dir)
    store = MemeStore(connect(first.start().url), ImageFiles(tmp_path / "images"))
    store.save(meme("crash", 5.0), PNG)  # answered: on disk (appendfsync always)
    assert first.pid is not None
    killed = first.pid
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: first.pid is None, 5, "the server's death noticed")

    try:  # the same object restarts after its server died on its own
        assert (
            MemeStore(connect(first.start().url), ImageFiles(tmp_path / "images")).get("crash")
            is not None
        )
        assert first.pid != killed
    finally:
        first.stop()


def test_stale_server_on_data_dir_is_replaced(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    orphan = EmbeddedRedis(data_dir)  # stands in for the server of a daemon that was killed
    MemeStore(connect(orphan.start().url), ImageFiles(tmp_path / "images")).save(
        meme("m", 1.0), PNG
    )
    orphan_pid = orphan.pid

    successor = EmbeddedRedis(data_dir)
    try:
        store = MemeStore(connect(successor.start().url), ImageFiles(tmp_path / "images"))
        assert orphan.pid is None
        assert successor.pid != orphan_pid
        assert store.get("m") is not None
    finally:
        successor.stop()
        orphan.stop()


def test_store_error_when_server_is_gone(tmp_path: Path) -> None:
    server = EmbeddedRedis(str(tmp_path / "data"))
    store = MemeStore(connect(server.start().url), ImageFiles(tmp_path / "images"))
    store.save(meme("m", 1.0), PNG)
    server.stop()

    started = time.monotonic()
    with pytest.raises(StoreError, match="reading meme m"):
        store.get("m")
    with pytest.raises(StoreError, match="saving meme n"):
        store.save(meme("n", 2.0), PNG)
    assert store.answers() is False
    # A refused connection fails at once (milliseconds), no retry loop; 5 s, scaled.
    assert time.monotonic() - started < scaled(5.0)


def test_stop_leaves_no_server_process(tmp_path: Path) -> None:
    server = EmbeddedRedis(str(tmp_path / "data"))
    server.start()
    pid = server.pid
    assert pid is not None
    assert psutil.Process(pid).name() == "redis-server"
    # Own session: a Ctrl-C to the daemon's process group does not reach the server.
    assert os.getsid(pid) != os.getsid(0)

    server.stop()
    server.stop()  # idempotent
    assert server.pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).name() != "redis-server"


def test_long_data_dir_moves_socket_to_short_tempdir(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(str(data_dir))
    target = server.start()
    try:
        socket_path = target.url.removeprefix("unix://").split("?")[0]
        assert not socket_path.startswith(str(tmp_path))
        assert connect(target.url).ping()
    finally:
        server.stop()
    assert not Path(socket_path).parent.exists()
    assert (data_dir / "appendonly.aof").exists()


def test_resolve_prefers_configured_url(tmp_path: Path) -> None:
    target, owned = resolve("redis://127.0.0.1:1/0", str(tmp_path / "unused"))
    assert (target, owned) == (RedisTarget("redis://127.0.0.1:1/0", embedded=False), None)
    assert not (tmp_path / "unused").exists()

    target, owned = resolve("", str(tmp_path / "data"))
    assert owned is not None
    try:
        assert target.embedded and target.url.startswith("unix://")
        assert connect(target.url).ping()
    finally:
        owned.stop()


# -- a dependency error is not a crash: fail fast while Redis is down, probe it back ----------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_availability_backs_off_between_probes_and_logs_each_transition(caplog) -> None:
    clock, probes, answering = FakeClock(), [], [False]

    def probe() -> None:
        probes.append(clock.now)
        if not answering[0]:
            raise redis.ConnectionError("refused")

    caplog.set_level("WARNING", logger="memesys.storage.availability")
    a = Availability(probe, "test", initial_s=0.1, max_s=0.4, clock=clock)
    assert a.answers() and probes == []  # up: no probe at all
    a.failed(redis.TimeoutError("Timeout reading from socket"))
    assert not a.up and a.reason == "not answering in time"
    with pytest.raises(StoreDown, match="not answering in time"):
        a.require("reading meme m")
    assert probes == []  # failing fast: nothing attempted before the probe is due
    for step in (0.1, 0.2, 0.4, 0.4):  # doubling up to max_s
        clock.now += step - 0.001
        before = len(probes)
        assert not a.answers() and len(probes) == before  # not due yet
        clock.now += 0.001
        assert not a.answers() and len(probes) == before + 1
    assert a.reason == "unreachable"
    answering[0] = True
    clock.now += 0.4
    assert a.answers() and a.up and a.outages == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # down once, back once: not once per failed probe
    assert "redis is down (not answering in time" in messages[0]
    assert "redis is back after 1.5 s down" in messages[1]


def test_a_store_fails_fast_while_redis_is_down_and_is_back_once_it_is(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    server = EmbeddedRedis(data_dir)
    url = server.start().url
    availability = Availability(probe_client(url).ping, initial_s=0.05, max_s=0.2)
    store = MemeStore(connect(url), ImageFiles(tmp_path / "images"), "p", availability)
    store.save(meme("m", 1.0), PNG)
    server.stop()
    try:
        with pytest.raises(StoreError) as first:
            store.get("m")
        assert not isinstance(first.value, StoreDown) and not availability.up
        started = time.monotonic()
        for _ in range(100):
            with pytest.raises(StoreError):
                store.get("m")
        assert time.monotonic() - started < 1.0  # ~5 probes in all, not 100 connection attempts
        assert store.answers() is False

        server.start()  # the same socket, the same data
        wait_for(store.answers, 1.0, "the store up again")
        assert store.get("m") == meme("m", 1.0)
    finally:
        server.stop()


def test_a_stopped_server_costs_one_timeout_then_fails_fast(tmp_path: Path) -> None:
    server = EmbeddedRedis(str(tmp_path / "data"))
    url = server.start().url
    availability = Availability(probe_client(url).ping, initial_s=0.05, max_s=0.2)
    store = MemeStore(
        connect(url, timeout_s=0.5), ImageFiles(tmp_path / "images"), "p", availability
    )
    store.save(meme("m", 1.0), PNG)
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="not answering in time"):
            store.get("m")
        assert 0.4 < time.monotonic() - started < 2.0  # one socket timeout
        started = time.monotonic()
        with pytest.raises(StoreDown):
            store.get("m")
        assert time.monotonic() - started < 0.3  # at most one short probe
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(store.answers, 1.0, "the store up again")
    assert store.get("m") is not None
    server.stop()


def test_a_health_probe_answers_within_its_bound_when_the_server_is_stopped(tmp_path: Path) -> None:
    """A health check must not wait out an operation's socket timeout: a stopped server is
    reported after one short probe, and answering again once it is resumed. The check only
    reports: the operations' view of Redis stays up (an operation that fails marks it down)."""
    server = EmbeddedRedis(str(tmp_path / "data"))
    url = server.start().url
    probe = probe_client(url)
    availability = Availability(probe.ping, initial_s=0.05, max_s=0.2)
    pid = server.pid
    try:
        assert availability.health() == ""
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert availability.health() == "not answering in time"
            assert time.monotonic() - started < 1.0  # PROBE_TIMEOUT_S, not CLIENT_TIMEOUT_S
            assert availability.up
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: availability.health() == "", 1.0, "the probe answering again")
    finally:
        probe.close()
        server.stop()


def test_plan_fixes_the_socket_before_the_server_starts(tmp_path: Path) -> None:
    planner = EmbeddedRedis(str(tmp_path / ("d" * 60) / ("e" * 60)))
    target = planner.plan()
    owner = EmbeddedRedis(str(planner.data_dir), socket_path=str(planner.socket_path))
    try:
        assert owner.start() == target
        pid = owner.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: owner.pid is None, 5, "the server's death noticed")
        assert owner.exit_reason() == "killed by SIGKILL"
        assert owner.start() == target  # restarted on the same socket
        assert "had died" in owner.previous
        assert connect(target.url).ping()
    finally:
        owner.stop()
    assert planner.socket_path.parent.exists()  # kept for restarts until released
    planner.release()
    assert not planner.socket_path.parent.exists()
