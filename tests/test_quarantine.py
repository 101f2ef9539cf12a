"""Poison data is quarantined, never fatal (issue 7, item 3).

Store level: every kind of record the daemon writes (meme record, PNG, cache entry, task
record), corrupted behind the store's back, is moved aside under ``{p}:quarantine:{kind}:{id}``
with an entry (kind, id, reason, time; no content) on ``{p}:quarantine`` and a count per kind,
logged once, and treated as absent. Daemon level: one corrupt record of every kind → the
daemon stays ready, listings answer 200, a corrupt cache entry is regenerated, corrupt tasks
read as failed with a clear error, the ledger does not crash-loop, and the records are in
quarantine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import redis

from memesys.domain.images import image_ref
from memesys.storage.images import ImageFiles
from memesys.storage.memes import ImageLost
from memesys.storage.quarantine import Quarantine, fingerprint
from memesys.storage.tasks import CORRUPT_TASK_MESSAGE, TaskStore
from tests.support.daemon import DaemonProcess, daemon_redis, restarts, tree, wait_task
from tests.support.metrics import sample
from tests.support.records import PNG, legacy_meme, meme
from tests.support.timing import wait_for

pytestmark = pytest.mark.store

QLOG = "memesys.storage.quarantine"


@pytest.fixture
def tasks(client: redis.Redis, prefix: str) -> TaskStore:
    return TaskStore(client, prefix, ttl_s=600)


def entries(client: redis.Redis, prefix: str) -> list[dict]:
    return Quarantine(client, prefix).entries()


def quarantine_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == QLOG]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "field 'id'"),
        (json.dumps(meme("other", 1.0)).encode(), "its id"),
        (json.dumps({**meme("bad", 1.0), "top_text": 7}).encode(), "field 'top_text'"),
        (
            json.dumps({**meme("bad", 1.0), "created_at": "yesterday"}).encode(),
            "field 'created_at'",
        ),
    ],
)
def test_a_corrupt_meme_record_is_quarantined_and_skipped(
    store, client, prefix, caplog, raw, reason
) -> None:
    caplog.set_level(logging.WARNING, logger=QLOG)
    store.save(meme("good", 1.0), PNG)
    store.save(meme("bad", 2.0), PNG)
    client.set(f"{prefix}:meme:bad", raw)

    page, _ = store.list()
    assert [m["id"] for m in page] == ["good"]  # the good record; the bad one skipped
    assert store.get("bad") is None
    assert store.list()[0] == page  # and gone from the index: not met again
    assert client.zscore(f"{prefix}:memes", "bad") is None
    assert client.get(f"{prefix}:quarantine:meme:bad") == raw  # moved aside, as it was
    assert 0 < client.ttl(f"{prefix}:quarantine:meme:bad") <= 7 * 24 * 3600
    [entry] = entries(client, prefix)
    assert entry["kind"] == "meme" and entry["id"] == "bad" and reason in entry["reason"]
    assert entry["key"] == f"{prefix}:meme:bad" and time.time() - entry["at"] < 60
    assert store.quarantined() == {"meme": 1}
    assert len(quarantine_logs(caplog)) == 1  # logged once, though met twice


def test_a_meme_key_of_the_wrong_type_is_quarantined(store, client, prefix) -> None:
    store.save(meme("m", 1.0), PNG)
    client.delete(f"{prefix}:meme:m")
    client.rpush(f"{prefix}:meme:m", "a", "b")
    assert store.get("m") is None
    assert client.type(f"{prefix}:quarantine:meme:m") == b"list"
    assert entries(client, prefix)[0]["reason"] == "not a string key"


@pytest.mark.parametrize("png", [b"GIF89a....", PNG[:-4], b"", PNG[:-12] + PNG[-8:]])
def test_a_corrupt_png_file_is_quarantined_and_not_served(store, prefix, caplog, png) -> None:
    """Rotten bytes (not a PNG, truncated, empty, or a whole PNG that is not the one the record
    names) are moved aside once: a clear 404 (ImageLost), then a missing picture."""
    caplog.set_level(logging.WARNING, logger=QLOG)
    store.save(meme("m", 1.0), PNG)
    store.images.meme_path("m").write_bytes(png)  # in place: the one file of those bytes
    with pytest.raises(ImageLost, match="image of meme m was corrupt and is quarantined"):
        store.image("m")
    assert store.images.quarantine_path("m").read_bytes() == png
    assert not store.images.content_path(image_ref(PNG)["sha256"]).exists()  # not reused
    [entry] = entries(store.client, prefix)
    assert entry["kind"] == "png" and entry["id"] == "m"
    assert entry["moved_to"] == str(store.images.quarantine_path("m"))
    assert store.quarantined() == {"png": 1} and len(quarantine_logs(caplog)) == 1
    assert store.get("m") is not None  # the record itself is fine
    with pytest.raises(ImageLost, match="image of meme m is missing"):
        store.image("m")  # moved once, counted once
    assert store.quarantined() == {"png": 1}
    store.save(meme("n", 2.0), PNG)  # the same picture again is written anew
    assert store.image("n").png == PNG


@pytest.mark.parametrize("png", [b"GIF89a....", PNG[:-4], b""])
def test_a_corrupt_png_kept_in_redis_is_quarantined_and_not_served(
    store, client, prefix, png
) -> None:
    legacy_meme(client, prefix, "m", 1.0, png)
    assert store.image("m") is None
    assert client.get(f"{prefix}:quarantine:png:m") == png
    assert store.get("m") is not None  # the record itself is fine
    assert store.quarantined() == {"png": 1}


@pytest.mark.parametrize("raw", [b"../../etc", b"\xff\xfe", b"", b"x" * 100])
def test_a_corrupt_cache_entry_is_a_miss_then_replaced(store, client, prefix, raw) -> None:
    store.save(meme("m", 1.0), PNG)
    store.cache_put("topic", "m", 60)
    [cache_key] = [k for k in client.scan_iter(match=f"{prefix}:cache:*")]
    client.set(cache_key, raw)
    assert store.cache_get("topic") is None  # a miss: the meme is made again
    assert store.quarantined() == {"cache": 1}
    store.save(meme("n", 2.0), PNG)
    store.cache_put("topic", "n", 60)  # regenerated: the entry works again
    assert store.cache_get("topic") == "n"


def test_a_cache_entry_of_a_corrupt_meme_is_a_miss(store, client, prefix) -> None:
    store.save(meme("m", 1.0), PNG)
    store.cache_put("topic", "m", 60)
    client.set(f"{prefix}:meme:m", b"\x00garbage")
    meme_id = store.cache_get("topic")  # the entry itself is fine ...
    assert meme_id == "m" and store.get(meme_id) is None  # ... its meme is quarantined
    assert store.cache_get("topic") is None  # and from then on it is a miss


def test_a_corrupt_open_task_is_failed_and_leaves_the_open_set(
    tasks, client, prefix, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger=QLOG)
    now = time.time()
    good = {
        "id": "good",
        "status": "queued",
        "stage": "queued",
        "progress": 0.0,
        "request": {"topic": "x"},
        "created_at": now,
        "updated_at": now,
    }
    tasks.put(good)
    tasks.put({**good, "id": "bad"})
    client.set(f"{prefix}:task:bad", b'{"id": "bad", "status": "queu')

    assert [t["id"] for t in tasks.open_tasks()] == ["good"]
    assert client.smembers(f"{prefix}:tasks:open") == {b"good"}
    failed = tasks.get("bad")
    assert failed["status"] == "failed" and failed["progress"] == 1.0
    assert failed["error"] == {"code": "internal", "message": CORRUPT_TASK_MESSAGE}
    assert 0 < client.ttl(f"{prefix}:task:bad") <= 600  # the failed record keeps the TTL
    assert client.get(f"{prefix}:quarantine:task:bad") == b'{"id": "bad", "status": "queu'
    assert tasks.open_tasks()[0]["id"] == "good"
    assert len(quarantine_logs(caplog)) == 1


@pytest.mark.parametrize(
    "record",
    [
        {"status": "running", "request": {"topic": "x", "colour": "red"}},  # unknown field
        {"status": "queued", "request": {"format": "drake"}},  # no topic
        {"status": "queued", "request": None},
        {"status": "nonsense"},
        {"status": "succeeded", "meme_id": "../x"},
        {"status": "failed", "error": "boom"},
        {"progress": None},
    ],
)
def test_a_task_that_does_not_validate_is_failed(tasks, client, prefix, record) -> None:
    now = time.time()
    base = {
        "id": "t",
        "status": "queued",
        "stage": "queued",
        "progress": 0.0,
        "request": {"topic": "x"},
        "created_at": now,
        "updated_at": now,
    }
    client.set(f"{prefix}:task:t", json.dumps({**base, **record}))
    client.sadd(f"{prefix}:tasks:open", "t")
    assert tasks.open_tasks() == []
    assert tasks.get("t")["status"] == "failed"


def test_a_finished_task_is_final(tasks) -> None:
    now = time.time()
    task = {
        "id": "t",
        "status": "running",
        "stage": "generating",
        "progress": 0.5,
        "request": {"topic": "x"},
        "created_at": now,
        "updated_at": now,
    }
    tasks.put(task)
    assert tasks.put_if_open(
        {
            **task,
            "status": "failed",
            "stage": "done",
            "progress": 1.0,
            "error": {"code": "timeout", "message": "late"},
        }
    )
    # A late answer (a duplicate, or after the record was quarantined) changes nothing.
    assert not tasks.put_if_open({**task, "status": "succeeded", "meme_id": "m"})
    assert tasks.get("t")["status"] == "failed"
    assert not tasks.put_if_open({**task, "id": "missing"})


def test_a_record_is_moved_once_and_only_while_it_is_the_corrupt_one(
    client, prefix, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger=QLOG)
    q = Quarantine(client, prefix)
    key = f"{prefix}:meme:m"
    client.set(key, b"corrupt")
    print_ = fingerprint(b"corrupt")
    assert q.move("meme", "m", key, print_, "reason") is True
    assert q.move("meme", "m", key, print_, "reason") is False  # another process was first
    client.set(key, b"rewritten meanwhile")
    assert q.move("meme", "m", key, print_, "reason") is False  # not the value we judged
    assert client.get(key) == b"rewritten meanwhile"
    assert q.counts() == {"meme": 1} and len(q.entries()) == 1
    assert len(quarantine_logs(caplog)) == 1


def test_quarantine_entries_hold_no_content(store, client, prefix) -> None:
    secret_topic = "my very private topic"
    store.save(meme("m", 1.0, topic=secret_topic), PNG)
    client.set(f"{prefix}:meme:m", json.dumps({"topic": secret_topic}))
    assert store.get("m") is None
    assert secret_topic not in json.dumps(entries(client, prefix))


def test_erasure_deletes_quarantined_copies(store, client, prefix) -> None:
    store.save(meme("m", 1.0), PNG)
    store.images.meme_path("m").write_bytes(b"corrupt png")
    with pytest.raises(ImageLost):
        store.image("m")
    client.set(f"{prefix}:meme:m", b"corrupt")
    assert store.get("m") is None
    legacy_meme(client, prefix, "old", 2.0, b"corrupt png")  # a PNG still kept in Redis
    assert store.image("old") is None
    client.set(f"{prefix}:meme:old", b"corrupt")
    assert store.get("old") is None
    assert len(list(client.scan_iter(match=f"{prefix}:quarantine:*:*"))) == 3
    assert store.delete("m") is True and store.delete("old") is True
    assert not any(client.scan_iter(match=f"{prefix}:quarantine:*:*"))
    assert [p for p in store.images.root.rglob("*") if p.is_file()] == []
    assert store.delete("m") is False


def test_the_store_never_writes_what_it_would_quarantine(store) -> None:
    with pytest.raises(ValueError, match="top_text"):
        store.save({**meme("m", 1.0), "top_text": None}, PNG)
    with pytest.raises(ValueError, match="PNG"):
        store.save(meme("m", 1.0), b"not a png")
    with pytest.raises(ValueError, match="image_url"):
        store.save({**meme("m", 1.0), "image_url": 3}, PNG)


# -- the daemon -----------------------------------------------------------------------------


@pytest.mark.slow
def test_one_corrupt_record_of_every_kind_never_stops_the_daemon(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    r = daemon_redis(daemon)
    p = daemon.key_prefix
    try:
        made = [
            daemon.json("POST", "/v1/memes", {"topic": f"poison {i}"})[1]["id"] for i in range(4)
        ]
        status, accepted = daemon.json("POST", "/v1/memes?async=true", {"topic": "poison task"})
        assert status == 202
        assert wait_task(daemon, accepted["task_id"])["status"] == "succeeded"
        before = restarts(tree(daemon))

        # One corrupt record of every kind the daemon writes.
        r.set(f"{p}:meme:{made[0]}", b"{truncated")  # a meme record that does not parse
        r.set(f"{p}:meme:{made[1]}", b"[]")  # one that parses but is no meme
        images = ImageFiles(tmp_path / "images")
        images.meme_path(made[2]).write_bytes(b"not a png")  # an image file
        cache_keys = {r.get(k).decode(): k for k in r.scan_iter(match=f"{p}:cache:*")}
        r.set(cache_keys[made[3]], b"!!")  # a cache entry
        r.set(f"{p}:task:{accepted['task_id']}", b"\x00\x01")  # a finished task record
        now = time.time()  # an open task the ledger must take back from Redis
        r.set(
            f"{p}:task:opentask",
            json.dumps({"id": "opentask", "status": "queued", "created_at": now, "request": 42}),
        )
        r.sadd(f"{p}:tasks:open", "opentask")
        # The new ledger reads every open task back (as after any restart of the group).
        assert daemon.admin("restart", "tasks/ledger").returncode == 0

        status, page = daemon.json("GET", "/v1/memes?limit=100")
        assert status == 200
        listed = {m["id"] for m in page["memes"]}
        assert made[0] not in listed and made[1] not in listed and made[2] in listed
        assert daemon.json("GET", f"/v1/memes/{made[0]}")[0] == 404
        assert daemon.request("GET", f"/v1/memes/{made[2]}/image.png")[0] == 404
        status, again = daemon.json("POST", "/v1/memes", {"topic": "poison 3"})
        assert status == 201 and again["cached"] is False  # a miss: made again
        assert daemon.json("POST", "/v1/memes", {"topic": "poison 3"})[1]["cached"] is True
        for task_id in (accepted["task_id"], "opentask"):
            task = wait_task(daemon, task_id)
            assert task["status"] == "failed", task
            assert task["error"]["code"] == "internal" and task["error"]["message"]

        wait_for(lambda: len(Quarantine(r, p).entries()) >= 6, 10, "six quarantined", interval=0.05)
        kinds = sorted(e["kind"] for e in Quarantine(r, p).entries())
        assert kinds == ["cache", "meme", "meme", "png", "task", "task"], kinds
        assert daemon.json("GET", "/readyz")[0] == 200
        metrics = daemon.request("GET", "/metrics")[2].decode()
        assert sample(metrics, "memesys_store_quarantined_total") == 6
        assert sample(metrics, "memesys_store_up") == 1
        # Nothing crashed: only the ledger/runner restart that was asked for.
        after = restarts(tree(daemon))
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
            "tasks/ledger": 1,
            "tasks/runner": 1,
        }, after
        assert daemon.proc.poll() is None
        log = daemon.log_text()
        assert log.count("quarantined the") == 6 and "Traceback" not in log
    finally:
        r.close()
        assert daemon.stop() == []
