"""The event log against a real redis-server: optimistic appends, the global order, sealing and
crypto-shredding, and projections rebuilt from the log alone."""

from __future__ import annotations

import threading

import pytest
import redis

from memesys.domain.events import EXPIRED
from memesys.storage.errors import StoreError
from memesys.storage.eventlog import (
    ANY_VERSION,
    Event,
    EventLog,
    ProjectionBlocked,
    VersionConflict,
)
from memesys.storage.memes import MemeStore
from memesys.storage.projector import rebuild
from memesys.storage.sealing import Sealer, Shredded
from memesys.storage.tasks import TaskStore
from tests.support.records import PNG, meme

pytestmark = pytest.mark.store


def event(kind: str, entity: str = "meme:a", **data: object) -> Event:
    return Event(kind, entity, data, correlation="req-1", cause="request", trace="t" * 32)


def test_an_append_checks_the_version_it_expects(client: redis.Redis, prefix: str) -> None:
    log = EventLog(client, prefix)
    assert log.append(event("requested"), expected=0).seq == 1
    assert log.append(event("completed"), expected=1).seq == 2
    with pytest.raises(VersionConflict) as lost:
        log.append(event("failed"), expected=1, writes=[("SET", f"{prefix}:x", "1")])
    assert (lost.value.expected, lost.value.actual) == (1, 2)
    assert client.get(f"{prefix}:x") is None  # a refused append runs none of its writes
    assert [r.event.type for r in log.history("meme:a")] == ["requested", "completed"]
    assert log.append(event("cached"), ANY_VERSION).seq == 3


def test_of_racing_writers_at_one_version_exactly_one_wins(
    client: redis.Redis, prefix: str
) -> None:
    log = EventLog(client, prefix)
    outcomes: list[str] = []

    def write(n: int) -> None:
        try:
            log.append(event("refined", n=n), expected=0)
            outcomes.append("won")
        except VersionConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert log.version("meme:a") == 1


def test_the_global_stream_orders_every_entity(client: redis.Redis, prefix: str) -> None:
    log = EventLog(client, prefix)
    log.append(event("requested", "meme:b"))
    log.append(event("requested", "meme:a"))
    log.append(event("completed", "meme:b", id="b"))
    first = log.places("0-0", 2)
    places = first + log.places(first[-1].sid, 2)
    assert [(p.entity, p.seq, p.type) for p in places] == [
        ("meme:b", 1, "requested"),
        ("meme:a", 1, "requested"),
        ("meme:b", 2, "completed"),
    ]
    replayed = log.read(places)
    assert [(r.event.entity, r.seq, r.id) for r in replayed] == [
        (p.entity, p.seq, p.sid) for p in places
    ]
    assert replayed[2].event.data == {"id": "b"} and replayed[2].event.trace == "t" * 32


def test_a_projection_write_is_one_of_the_allowed_commands(
    client: redis.Redis, prefix: str
) -> None:
    with pytest.raises(ValueError):
        EventLog(client, prefix).append(event("completed"), writes=[("FLUSHALL",)])


def test_a_projection_that_would_fail_halfway_appends_nothing(
    client: redis.Redis, prefix: str
) -> None:
    log = EventLog(client, prefix)
    log.append(event("requested"), writes=[("SET", f"{prefix}:x", "1")])  # the checkpoint's
    client.set(log.checkpoint, client.get(log.projected) or b"")  # projections hold the log
    index = f"{prefix}:index"
    client.set(index, "not a sorted set")  # a corrupt key the second write would meet
    writes = [("SET", f"{prefix}:meme:a", "{}"), ("ZADD", index, "1", "a")]
    with pytest.raises(ProjectionBlocked, match=f"{index} holds a string, not a zset"):
        log.append(event("completed", id="a"), expected=1, writes=writes)
    # Without the check Redis runs the SET, stops at the ZADD, and keeps the XADDs and the
    # moved checkpoint: the log would say the projections hold an event they hold half of.
    assert client.get(f"{prefix}:meme:a") is None
    assert [r.event.type for r in log.history("meme:a")] == ["requested"]
    assert client.xlen(log.all) == 1
    assert client.get(log.checkpoint) == client.get(log.projected)
    client.delete(index)
    assert log.append(event("completed", id="a"), expected=1, writes=writes).seq == 2


def test_sealed_fields_open_for_their_entity_only_until_shredded(
    client: redis.Redis, prefix: str
) -> None:
    sealer = Sealer(client, prefix)
    sealed = sealer.seal("meme:a", {"topic": "my secret topic"})
    assert b"secret" not in sealed
    assert sealer.open("meme:a", sealed) == {"topic": "my secret topic"}
    sealer.seal("meme:b", {"x": 1})  # b has a key of its own: a's value does not open with it
    with pytest.raises(StoreError):
        sealer.open("meme:b", sealed)
    client.delete(sealer.key_name("meme:a"))
    with pytest.raises(Shredded):
        sealer.open("meme:a", sealed)


def outside_the_log(client: redis.Redis, prefix: str, but: str = "") -> list[bytes]:
    """Every key under ``prefix`` outside its event log (but the key ``but``)."""
    return [
        k
        for k in client.scan_iter(match=f"{prefix}:*", count=500)
        if not k.startswith(f"{prefix}:events:".encode()) and k != but.encode()
    ]


def test_replay_rebuilds_every_meme_from_the_log_alone(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    memes = [meme(f"m{n}", 1000.0 + n, caption=f"Ünïcode {n} 🐸") for n in range(7)]
    for m in memes:
        store.save(m, PNG)
    store.cache_put("cats", "m1", 600)
    store.cache_put("dogs", "m2", 600)
    store.cache_put("dogs", "m3", 600)  # re-pointed: the newer entry wins on replay too
    store.cache_put("birds", "m4", 600)
    assert store.delete("m4") and store.delete("m5")
    before = {m["id"]: store.get(m["id"]) for m in memes}
    listed = store.list(limit=50)[0]

    client.delete(*outside_the_log(client, prefix))
    assert store.get("m1") is None and store.list() == ([], None)
    done = rebuild(client, prefix, batch=3)

    assert (done.events, done.shredded) == (7 + 4 + 2, 2)  # the records of m4 and m5
    assert {m["id"]: store.get(m["id"]) for m in memes} == before
    assert before["m4"] is None and before["m5"] is None  # erased memes stay gone
    assert store.list(limit=50)[0] == listed
    assert (store.cache_get("cats"), store.cache_get("dogs")) == ("m1", "m3")
    assert store.cache_get("birds") is None
    assert rebuild(client, prefix).events == done.events  # idempotent: the same again
    assert {m["id"]: store.get(m["id"]) for m in memes} == before


def test_a_retried_save_is_recorded_once(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("once", 1.0), PNG)
    store.save(meme("once", 1.0), PNG)  # its first reply lost: the retry finds it written
    assert [r.event.type for r in store.log.history("meme:once")] == ["completed"]


def test_retention_expires_the_oldest_as_events_replay_keeps_them_gone(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    for n in range(5):
        store.save(meme(f"r{n}", 100.0 + n), PNG)
    assert store.older_than(102.0, 10) == ("r0", "r1")
    assert store.older_than(104.5, 2) == ("r0", "r1")  # oldest first, a bounded batch
    assert all(store.delete(i, EXPIRED) for i in store.older_than(102.0, 10))
    assert store.older_than(102.0, 10) == ()
    assert [r.event.type for r in store.log.history("meme:r0")] == ["completed", "expired"]
    client.delete(*outside_the_log(client, prefix))
    rebuild(client, prefix)
    assert [m["id"] for m in store.list()[0]] == ["r4", "r3", "r2"]


def task(task_id: str, status: str, **extra: object) -> dict:
    open_ = status in ("queued", "running")
    return {
        "id": task_id,
        "status": status,
        "stage": "queued" if open_ else "done",
        "progress": 0.0 if open_ else 1.0,
        "request": {"topic": "a private topic", "seed": 1},
        "created_at": 100.0,
        "updated_at": 100.0,
        **extra,
    }


def test_a_tasks_record_is_the_projection_of_its_events(client: redis.Redis, prefix: str) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    tasks.put(task("t1", "queued"))
    assert tasks.put_if_open(task("t1", "running"))
    assert tasks.put_if_open(task("t1", "succeeded", meme_id="m1"))
    assert not tasks.put_if_open(task("t1", "failed"))  # final: a late answer changes nothing
    history = tasks.log.history("task:t1")
    assert [r.event.type for r in history] == ["task_queued", "task_running", "task_succeeded"]
    assert {r.event.correlation for r in history} == {"t1"}
    assert b"private" not in b"".join(
        v for _, e in client.xrange(f"{prefix}:events:task:t1") for v in e.values()
    )
    before = tasks.get("t1")
    assert before["status"] == "succeeded" and 590 < client.ttl(f"{prefix}:task:t1") <= 600
    assert 590 < client.ttl(f"{prefix}:events:task:t1") <= 600  # the task's log expires with it

    client.delete(*outside_the_log(client, prefix))
    assert tasks.get("t1") is None
    rebuild(client, prefix)
    assert tasks.get("t1") == before and tasks.open_tasks() == []
    assert client.get(f"{prefix}:taskof:m1") == b"t1"

    assert tasks.scrub_meme("m1") == "t1"  # erasure: the request's key goes, the task stays
    scrubbed = tasks.get("t1")
    assert "request" not in scrubbed and scrubbed["status"] == "succeeded"
    client.delete(*outside_the_log(client, prefix))
    rebuild(client, prefix)
    assert tasks.get("t1") == scrubbed and client.get(f"{prefix}:taskof:m1") is None


def test_settling_a_dead_leases_meme_ends_an_unsaved_one_failed(
    client: redis.Redis, prefix: str
) -> None:
    """What a restarted ledger finds of the meme a dead lease was making
    (``TaskStore.settle``): saved, or ended ``failed`` so a late save no longer fits."""
    tasks, log = TaskStore(client, prefix, ttl_s=600), EventLog(client, prefix)
    assert tasks.settle("nostream") == "unmade"  # never begun: nothing to end
    assert log.version("meme:nostream") == 0
    log.append(event("requested", "meme:cut"), expected=0)
    log.append(event("caption_written", "meme:cut"), expected=1)
    assert tasks.settle("cut") == "unmade"
    ended = log.history("meme:cut")[-1].event
    assert (ended.type, ended.data) == ("failed", {"code": "worker_lost"})
    with pytest.raises(VersionConflict):  # the worker that outlived its ledger saves late
        log.append(event("completed", "meme:cut", id="cut"), expected=2)
    assert tasks.settle("cut") == "unmade" and log.version("meme:cut") == 3  # ended once
    log.append(event("requested", "meme:made"), expected=0)
    log.append(event("completed", "meme:made", id="made"), expected=1)
    assert tasks.settle("made") == "made" and log.version("meme:made") == 2
    log.append(event("erased", "meme:made", id="made"), expected=2)
    assert tasks.settle("made") == "erased"  # never made again: its task is scrubbed


def test_racing_ledgers_record_one_outcome(client: redis.Redis, prefix: str) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    tasks.put(task("t2", "running"))
    outcomes: list[bool] = []
    threads = [
        threading.Thread(target=lambda s=status: outcomes.append(tasks.put_if_open(task("t2", s))))
        for status in ("succeeded", "failed") * 3
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == [False] * 5 + [True]
    assert [r.event.type for r in tasks.log.history("task:t2")][:1] == ["task_running"]
    assert len(tasks.log.history("task:t2")) == 2
