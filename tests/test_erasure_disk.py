"""Erasure reaches the disk (issue 17, item 4): within ``storage.erasure_window_s`` of a DELETE
no file under the data directory holds the meme's plaintext or its sealing key.

The embedded Redis's AOF and RDB are rewritten by forks that start after the erasure
(:mod:`memesys.storage.rewrites`, stepped by the daemon's ``redis/rewriter``). Every test reads
the real files of a real redis-server.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from memesys.storage.connection import EmbeddedRedis, connect
from memesys.storage.erasures import Erasures
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore
from memesys.storage.rewrites import Phase, Rewrites
from tests.support.daemon import DaemonProcess, daemon_redis, wait_task
from tests.support.records import PNG, letters, meme
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.store

PREFIX = "t"
FILLER = 300  # keys that make a rewrite slow under rdb-key-save-delay


def holding(folder: Path, *needles: bytes) -> list[str]:
    """Every regular file under ``folder`` (recursively) that holds one of ``needles``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # a temp file renamed meanwhile
                continue
            found += [f"{path.relative_to(folder)}: {n!r}" for n in needles if n in data]
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(str(tmp_path / "redis"))
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
def r(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    assert server.socket_path is None  # not planned: start() chose it
    client = connect(f"unix://{server.data_dir / 'redis.sock'}")
    yield client
    client.close()


def erase(r: redis.Redis, erasures: Erasures, *keys: str) -> None:
    """The shape of MemeStore.delete: the deletes and the count in one transaction."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(*keys)
    erasures.count_in(pipe)
    pipe.execute()


def settle(rewrites: Rewrites, runs: int, timeout: float = 10.0) -> None:
    wait_for(lambda: rewrites.step() or rewrites.runs >= runs, timeout, "the rewrite", 0.02)


def slow_rewrites(r: redis.Redis) -> None:
    """Forks from now on write their files slowly (3 ms a key: about 1 s)."""
    r.mset({f"{PREFIX}:filler:{i}": i for i in range(FILLER)})
    r.config_set("rdb-key-save-delay", 3000)


def test_a_rewrite_running_at_the_erasure_does_not_count(
    server: EmbeddedRedis, r: redis.Redis
) -> None:
    erasures = Erasures(r, PREFIX)
    rewrites = Rewrites(r, erasures, window_s=10)
    r.set(f"{PREFIX}:meme:1", b"TOPSECRET-1")  # short: kept raw, never LZF-compressed
    slow_rewrites(r)
    r.bgrewriteaof()  # forked before the erasure: it holds the key
    r.config_set("rdb-key-save-delay", 0)  # the next fork is fast
    erase(r, erasures, f"{PREFIX}:meme:1")
    assert r.info("persistence")["aof_rewrite_in_progress"] == 1

    rewrites.step()
    assert rewrites.phase is Phase.AOF and "already in progress" in rewrites.reason
    wait_for(lambda: not r.info("persistence")["aof_rewrite_in_progress"], 10, "the first rewrite")
    assert holding(server.data_dir, b"TOPSECRET-1") == ["appendonly.aof: b'TOPSECRET-1'"]

    settle(rewrites, 1)
    assert holding(server.data_dir, b"TOPSECRET-1") == []
    assert erasures.state() == (1, 1) and rewrites.phase is Phase.IDLE


def test_one_rewrite_covers_every_erasure_before_it_in_the_aof_and_the_rdb(
    server: EmbeddedRedis, r: redis.Redis
) -> None:
    erasures = Erasures(r, PREFIX)
    rewrites = Rewrites(r, erasures, window_s=10)
    secrets = [f"TOPSECRET-{i}".encode() for i in range(5)]
    for i, secret in enumerate(secrets):
        r.set(f"{PREFIX}:meme:{i}", secret)
    r.bgsave()
    wait_for(lambda: not r.info("persistence")["rdb_bgsave_in_progress"], 10, "the snapshot")
    assert len(holding(server.data_dir, secrets[0])) == 2  # the AOF and dump.rdb
    for i in range(5):
        erase(r, erasures, f"{PREFIX}:meme:{i}")
    assert erasures.state() == (5, 0)

    settle(rewrites, 1)
    for _ in range(5):  # nothing more is owed: no second run
        rewrites.step()
    assert rewrites.runs == 1 and erasures.state() == (5, 5)
    assert holding(server.data_dir, *secrets) == []


def test_a_server_restarted_during_the_rewrite_is_asked_again(
    server: EmbeddedRedis, r: redis.Redis
) -> None:
    """The new server loaded the old AOF (the key, then its DEL); a killed rewrite's fork
    and its temp file do not outlive it."""
    erasures = Erasures(r, PREFIX)
    rewrites = Rewrites(r, erasures, window_s=10)
    r.set(f"{PREFIX}:meme:1", b"TOPSECRET-1")
    slow_rewrites(r)
    r.bgrewriteaof()  # forked before the erasure: its temp file will hold the key
    time.sleep(0.3)  # it has written some of it
    old_pid = server.pid
    erase(r, erasures, f"{PREFIX}:meme:1")
    server.kill()
    server.start()  # the new server: the AOF with the key and its DEL
    assert server.pid != old_pid
    assert holding(server.data_dir, b"TOPSECRET-1") == ["appendonly.aof: b'TOPSECRET-1'"]
    assert not [p for p in psutil.process_iter(["name"]) if _group(p) == old_pid]

    r.set(f"{PREFIX}:meme:2", b"TOPSECRET-2")
    slow_rewrites(r)
    erase(r, erasures, f"{PREFIX}:meme:2")
    rewrites.step()  # our rewrite starts (slow) ...
    assert rewrites.phase is Phase.AOF_WAIT
    server.kill()  # ... and dies with its server
    server.start()
    rewrites.step()
    assert rewrites.reason == "the server restarted" and rewrites.phase is Phase.AOF
    settle(rewrites, 1, timeout=15)
    assert holding(server.data_dir, b"TOPSECRET-1", b"TOPSECRET-2") == []
    assert not list(server.data_dir.glob("temp-*"))


def _group(proc: psutil.Process) -> int | None:
    """The process group of a live redis-server (a zombie has closed its files)."""
    try:
        if proc.info["name"] != "redis-server" or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return os.getpgid(proc.pid)
    except (psutil.Error, OSError):
        return None


def test_a_debt_past_the_window_is_a_warning(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    erasures = Erasures(r, PREFIX)
    now = [0.0]
    rewrites = Rewrites(r, erasures, window_s=1, clock=lambda: now[0])
    slow_rewrites(r)
    r.bgrewriteaof()  # one that runs before ours and holds it up
    erase(r, erasures, f"{PREFIX}:filler:0")
    rewrites.step()
    now[0] = 1.5
    with caplog.at_level("WARNING", logger="memesys.storage.rewrites"):
        rewrites.step()
        rewrites.step()
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "still in the Redis files" in warnings[0] and "already in progress" in warnings[0]


def test_the_count_survives_a_lost_key(r: redis.Redis) -> None:
    """covered never hides erasures counted after the hash was lost and counted again."""
    erasures = Erasures(r, PREFIX)
    for _ in range(3):
        erase(r, erasures, "nothing")
    assert erasures.cover(3) == 0 and erasures.state() == (3, 3)
    r.delete(erasures.key)
    erase(r, erasures, "nothing")
    assert erasures.cover(3) == 1 and erasures.state() == (1, 0)
    assert erasures.cover(1) == 0


def test_only_an_erasure_that_deleted_something_is_counted(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    store = MemeStore(client, ImageFiles(tmp_path / "images"), prefix)
    store.save(meme("m1", time.time()), PNG)
    assert store.delete("m1") is True
    assert store.erasures.state() == (1, 0)
    assert store.delete("m1") is False  # gone: the disk owes nothing more
    assert store.delete("never-made") is False
    assert store.erasures.state() == (1, 0)


def made_by_a_task(daemon: DaemonProcess, body: dict) -> dict:
    status, accepted = daemon.json("POST", "/v1/memes?async=true", body)
    assert status == 202, accepted
    task = wait_task(daemon, accepted["task_id"])
    assert task["status"] == "succeeded", task
    return task["meme"]


@pytest.mark.slow
def test_a_deleted_meme_is_in_no_file_under_the_data_dir_within_the_window(
    tmp_path: Path,
) -> None:
    window_s = 3.0
    daemon = DaemonProcess(
        tmp_path,
        {"MEMESYS_STORAGE_ERASURE_WINDOW_S": str(window_s), "MEMESYS_LOG_LEVEL": "INFO"},
    )
    daemon.env.pop("REDIS_URL", None)  # the embedded Redis: its files are the daemon's
    daemon.start()
    r = daemon_redis(daemon)
    mark = letters(10)
    topic, style = f"shred topic {mark}", f"style-{mark}"
    try:
        # a task's meme: its task's record holds the request in plain JSON (the meme's record
        # is compressed, its events sealed), so the files hold the topic before the erasure
        made = made_by_a_task(daemon, {"topic": topic, "style": style})
        key = r.get(f"{daemon.key_prefix}:events:key:meme:{made['id']}")
        assert key is not None and len(key) == 32
        needles = (topic.encode(), style.encode(), key)
        # before the erasure the files hold each of them (so the check below can fail)
        wait_for(lambda: all(holding(tmp_path, needle) for needle in needles), 3.0, "the AOF write")

        assert daemon.request("DELETE", f"/v1/memes/{made['id']}")[0] == 204
        erased = time.monotonic()
        wait_for(lambda: holding(tmp_path, *needles) == [], window_s, "the files to drop it")
        took = time.monotonic() - erased
        print(f"\nthe files dropped the erased meme {took:.2f} s after the 204")
        assert took <= scaled(window_s)

        def logged() -> list[str]:
            text = daemon.log_text()
            return [line for line in text.splitlines() if "erasure rewrite:" in line]

        lines = wait_for(logged, 2.0, "the rewrite's log line")  # at its next step
        assert len(lines) == 1, lines
        assert re.search(r" INFO .* AOF rewritten, RDB saved; 1 erasures out of ", lines[0])
    finally:
        r.close()
        assert daemon.stop() == []
    assert holding(tmp_path, *needles) == []  # and after a stop (SHUTDOWN SAVE)


@pytest.mark.slow
def test_an_ordered_stop_settles_what_the_disk_owes(tmp_path: Path) -> None:
    """With a window of an hour, a second erasure waits (runs start at most every quarter of
    it); the daemon's ordered stop rewrites the files before its Redis stops."""
    daemon = DaemonProcess(
        tmp_path, {"MEMESYS_STORAGE_ERASURE_WINDOW_S": "3600", "MEMESYS_LOG_LEVEL": "INFO"}
    )
    daemon.env.pop("REDIS_URL", None)
    daemon.start()
    mark = letters(10)
    try:
        for n in (1, 2):
            made = made_by_a_task(daemon, {"topic": f"stop {mark} {n}"})
            assert daemon.request("DELETE", f"/v1/memes/{made['id']}")[0] == 204
            if n == 1:  # the first run starts at once
                wait_for(lambda: not holding(tmp_path, f"{mark} 1".encode()), 5.0, "run 1")
        time.sleep(1.5)  # a step or more of the rewriter: the gap holds the second back
        assert holding(tmp_path, f"{mark} 2".encode())
    finally:
        assert daemon.stop() == []
    assert holding(tmp_path, mark.encode()) == []
    lines = [line for line in daemon.log_text().splitlines() if "erasure rewrite:" in line]
    assert len(lines) == 2, lines
