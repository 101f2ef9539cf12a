"""The projections' checkpoint, their catch-up after a loss (racing the appends that go on),
and the snapshot a replay starts from, against a real redis-server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from memesys.domain.events import FORMAT_CHOSEN
from memesys.storage.eventlog import Event
from memesys.storage.memes import MemeStore
from memesys.storage.projector import Projector, projections_behind, rebuild
from memesys.storage.snapshots import Snapshot
from memesys.storage.tasks import TaskStore
from tests.support.records import PNG, meme
from tests.test_eventlog import outside_the_log, task

pytestmark = pytest.mark.store


def projections(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every projection key's value, by type (the checkpoint aside). ``cachedby`` sets are left
    out: a replay of the whole log keeps a meme's membership of a cache entry that moved to a
    newer meme, one from the snapshot does not (it only ever widens what an erasure deletes)."""
    found: dict[str, Any] = {}
    kinds = tuple(f"{prefix}:{kind}" for kind in ("meme:", "memes", "cache:", "task:", "taskof:"))
    for raw in outside_the_log(client, prefix):
        key = raw.decode()
        if not key.startswith(kinds) and key != f"{prefix}:tasks:open":
            continue
        kind = client.type(key)
        if kind == b"string":
            found[key] = client.get(key)
        elif kind == b"zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            found[key] = sorted(client.smembers(key))
        else:
            found[key] = kind
    return found


def checkpoint(client: redis.Redis, prefix: str) -> bytes | None:
    return client.get(f"{prefix}:projections:checkpoint")


def test_appends_move_the_checkpoint_only_once_the_projections_hold_the_log(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("a", 1.0), PNG)
    assert checkpoint(client, prefix) is None  # a log whose projections were never caught up
    assert projections_behind(client, prefix)
    assert Projector(client, prefix).step(budget_s=5.0)
    assert checkpoint(client, prefix) == client.get(f"{prefix}:events:projected")
    store.save(meme("b", 2.0), PNG)  # in service: each projecting append moves it
    assert checkpoint(client, prefix) == client.get(f"{prefix}:events:projected")
    assert not projections_behind(client, prefix)

    client.delete(*outside_the_log(client, prefix))  # the projections are lost
    store.save(meme("c", 3.0), PNG)  # appends go on; the checkpoint stays missing
    assert checkpoint(client, prefix) is None and store.get("a") is None
    projector = Projector(client, prefix, batch=1)
    while not projector.step(budget_s=0.0):  # one batch a step
        pass
    assert [m["id"] for m in store.list()[0]] == ["c", "b", "a"]
    assert checkpoint(client, prefix) == client.get(f"{prefix}:events:projected")
    assert (projector.events, projector.from_snapshot) == (3, 0)

    client.delete(f"{prefix}:projections:checkpoint")
    tail = client.get(f"{prefix}:events:projected").decode()
    assert not projector.finish("0-1")  # an append projected after where a replay stopped
    assert checkpoint(client, prefix) is None
    assert projector.finish(tail) and checkpoint(client, prefix) == tail.encode()


def test_a_catch_up_racing_appends_and_erasures_ends_where_a_whole_replay_ends(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    for n in range(30):
        store.save(meme(f"old{n}", float(n)), PNG)
        store.cache_put(f"topic {n}", f"old{n}", 600)
    client.delete(*outside_the_log(client, prefix))
    stop, written = threading.Event(), threading.Semaphore(0)

    def write() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            store.save(meme(f"new{n}", 100.0 + n), PNG)
            store.cache_put(f"topic {n % 40}", f"new{n}", 600)  # re-points older entries
            if n % 3 == 0:
                store.delete(f"old{n % 30}")
            written.release()
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    for _ in range(5):  # the log goes on while the projections are lost, and during the replay
        assert written.acquire(timeout=10)
    projector = Projector(client, prefix, batch=4)
    try:
        while not projector.step(budget_s=0.001):
            pass
    finally:
        stop.set()
        writer.join(30)
    caught_up = projections(client, prefix)
    assert checkpoint(client, prefix) == client.get(f"{prefix}:events:projected")

    client.delete(*outside_the_log(client, prefix))
    rebuild(client, prefix)
    assert projections(client, prefix) == caught_up


def test_a_replay_from_the_snapshot_reads_one_event_a_live_entry_and_ends_as_the_whole_log(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    journal = [f"private topic {n}" for n in range(12)]
    for n in range(12):
        entity = f"meme:m{n}"
        progress = Event(  # a progress event before it, as the journal writes them
            FORMAT_CHOSEN,
            entity,
            {"format": "drake"},
            f"req-{n}",
            "request",
            "t" * 32,
            store.sealer.seal(entity, {"reason": journal[n]}),
        )
        store.save(meme(f"m{n}", 10.0 + n, caption=journal[n]), PNG, events=[progress])
        store.cache_put(journal[n], f"m{n}", 600)
    tasks.put(task("t1", "queued"))
    tasks.put_if_open(task("t1", "running"))
    tasks.put_if_open(task("t1", "succeeded", meme_id="m1"))
    assert store.delete("m0")
    snapshot = Snapshot(client, prefix)
    assert snapshot.due(every=10) and not snapshot.due(every=10_000)
    assert snapshot.fold(budget_s=5.0, batch=7)
    pointers = client.hgetall(snapshot.pointers)
    assert len(pointers) == 11 + 11 + 1  # memes, cache entries, the task; m0 and its entry gone
    assert not any(b"private" in v for v in [*pointers, *pointers.values()])
    assert not snapshot.due(every=1)

    store.delete("m1")  # after the snapshot: the log after its position drops it again
    store.save(meme("late", 99.0), PNG)
    store.cache_put(journal[2], "late", 600)  # re-pointed after the snapshot
    tasks.scrub_meme("m1")
    client.delete(*outside_the_log(client, prefix))
    done = rebuild(client, prefix)
    # m1's completed and t1's succeeded no longer open: their keys went with the erasure
    assert done.from_snapshot == 23 and done.shredded == 2
    assert store.get("m0") is None and store.get("m1") is None
    assert store.get("m2") is not None and store.cache_get(journal[2]) == "late"
    from_snapshot = projections(client, prefix)

    client.delete(snapshot.meta, snapshot.pointers, *outside_the_log(client, prefix))
    whole = rebuild(client, prefix)
    assert whole.from_snapshot == 0 and whole.events > done.events
    assert projections(client, prefix) == from_snapshot


def test_one_folder_at_a_time_and_expired_pointers_are_dropped(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("a", 1.0), PNG)
    store.cache_put("brief", "a", 1)
    snapshot = Snapshot(client, prefix)
    client.set(snapshot.lock, "another folder")
    assert not snapshot.fold(budget_s=1.0)
    assert snapshot.position() is None
    client.delete(snapshot.lock)
    assert snapshot.fold(budget_s=1.0)
    assert len(client.hgetall(snapshot.pointers)) == 2
    time.sleep(1.1)
    snapshot.fold(budget_s=1.0)  # nothing new to fold; the sweep drops the expired entry
    assert list(client.hgetall(snapshot.pointers)) == [b"meme:a"]


def test_a_meme_erased_while_a_replay_holds_its_opened_record_is_not_written_back(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("m", 1.0), PNG)
    client.delete(*outside_the_log(client, prefix))
    projector = Projector(client, prefix, batch=1)
    opened = projector.sealer.open

    def open_then_erase(entity: str, sealed: bytes) -> dict:
        fields = opened(entity, sealed)
        if entity == "meme:m" and client.exists(f"{prefix}:events:key:meme:m"):
            store.delete("m")  # lands between the replay's read of the record and its write
        return fields

    projector.sealer.open = open_then_erase  # type: ignore[method-assign]
    projector.step(budget_s=0.0)  # the meme's completed only: its erased event comes later
    assert client.exists(f"{prefix}:meme:m") == 0 and projector.shredded == 1
    while not projector.step(budget_s=0.0):
        pass
    assert store.get("m") is None and store.list() == ([], None)


def test_corrupt_events_and_pointers_are_skipped_never_raised(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("good", 1.0), PNG)
    everything = f"{prefix}:events:all"
    # as the append script writes them: the global entry first, the event under its id
    sid = client.xadd(everything, {"entity": "meme:bad", "seq": 1, "type": "completed"})
    client.xadd(f"{prefix}:events:meme:bad", {"type": "completed", "data": "{not json"}, sid)
    client.xadd(everything, {"no": "fields"})
    sid = client.xadd(everything, {"entity": "meme:x", "seq": 1, "type": "cached"})
    client.xadd(f"{prefix}:events:meme:x", {"type": "cached", "data": "{}"}, sid)  # no expiry
    snapshot = Snapshot(client, prefix)
    assert snapshot.fold(budget_s=5.0)  # the bad entries change no pointer
    client.hset(snapshot.pointers, "meme:garbled", "not a pointer")
    client.delete(*outside_the_log(client, prefix))
    done = rebuild(client, prefix)
    assert done.skipped >= 1 and store.get("good") is not None


def test_an_expired_cache_entry_replays_as_gone_not_as_the_older_entry_it_replaced(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    store.save(meme("old", 1.0), PNG)
    store.save(meme("new", 2.0), PNG)
    store.cache_put("same topic", "old", 600)
    store.cache_put("same topic", "new", 1)  # a shorter cache_ttl_s since
    time.sleep(1.1)
    assert store.cache_get("same topic") is None
    client.delete(*outside_the_log(client, prefix))
    rebuild(client, prefix)
    assert store.cache_get("same topic") is None


def test_one_replay_at_a_time_and_its_lock_is_renewed_batch_by_batch(
    client: redis.Redis, prefix: str, store: MemeStore
) -> None:
    for n in range(3):
        store.save(meme(f"m{n}", float(n)), PNG)
    client.delete(*outside_the_log(client, prefix))
    first, second = Projector(client, prefix, batch=1), Projector(client, prefix, batch=1)
    assert not first.step(budget_s=0.0)  # one batch: the lock taken, not done
    client.pexpire(first.lock.key, 500)  # as if its time were nearly up: the next batch renews it
    assert not second.step(budget_s=0.0) and second.events == 0  # held by the first
    assert not first.step(budget_s=0.0) and client.pttl(first.lock.key) > 1000
    while not first.step(budget_s=0.0):
        pass
    assert client.exists(first.lock.key) == 0  # released when done
    assert [m["id"] for m in store.list()[0]] == ["m2", "m1", "m0"]
