"""A real daemon's memes in the event log: each meme's stream holds its life in order, sealed,
with its trace and correlation; a refused meme ends in ``failed``; the projections come back
from the log alone through ``memesys-admin replay``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from memesys.storage.eventlog import EventLog, checkpoint_key
from memesys.storage.sealing import Sealer
from memesys.testing.ports import free_port
from tests.support.daemon import DaemonProcess, daemon_redis, wait_task
from tests.support.timing import scaled, wait_for
from tests.test_eventlog import outside_the_log

pytestmark = pytest.mark.store


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = DaemonProcess(tmp_path_factory.mktemp("events")).start()
    yield d
    d.stop()


def history(r: redis.Redis, prefix: str, meme_id: str) -> list:
    return EventLog(r, prefix).history(f"meme:{meme_id}")


def test_a_memes_stream_holds_its_life_in_order_and_sealed(daemon: DaemonProcess) -> None:
    r = daemon_redis(daemon)
    status, meme = daemon.json("POST", "/v1/memes", {"topic": "tea versus coffee", "style": "dry"})
    assert status == 201, meme
    events = history(r, daemon.key_prefix, meme["id"])
    types = [e.event.type for e in events]
    assert types[:3] == ["requested", "format_chosen", "caption_written"]
    assert types[-3:] == ["rendered", "completed", "cached"]  # not fresh: cached for its topic
    first_round = [e.event.data["verifier"] for e in events if e.event.type == "verdict"][:3]
    assert sorted(first_round) == ["appropriateness", "factuality", "instruction_following"]
    assert types.count("verdict") == 3 * (1 + types.count("refined")) and "scored" in types
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.event.trace for e in events} == {meme["trace_id"]}
    assert {e.event.correlation for e in events} == {meme["trace_id"]}
    assert events[1].event.cause == f"meme:{meme['id']}#1"  # caused by the one before
    assert events[1].event.data == {"format": meme["format"]}

    sealer = Sealer(r, daemon.key_prefix)
    entity = f"meme:{meme['id']}"
    assert sealer.open(entity, events[0].event.sealed)["topic"] == "tea versus coffee"
    assert sealer.open(entity, events[1].event.sealed) == {"reason": meme["format_reason"]}
    assert sealer.open(entity, events[2].event.sealed)["texts"] == list(meme["texts"].values())
    record = json.loads(sealer.open(entity, events[-2].event.sealed)["record"])
    assert record.pop("timings") and record == {k: v for k, v in meme.items() if k != "timings"}
    stream = f"{daemon.key_prefix}:events:{entity}"
    raw = b"".join(v for _, entry in r.xrange(stream) for v in entry.values())
    assert b"coffee" not in raw and b"dry" not in raw


def test_a_tasks_meme_carries_the_tasks_id(daemon: DaemonProcess) -> None:
    status, accepted = daemon.json("POST", "/v1/memes?async=true", {"topic": "monday again"})
    assert status == 202
    task = wait_task(daemon, accepted["task_id"])
    assert task["status"] == "succeeded", task
    events = history(daemon_redis(daemon), daemon.key_prefix, task["meme"]["id"])
    assert {e.event.correlation for e in events} == {accepted["task_id"]}
    assert events[0].event.data["background"] is True


def test_a_refused_meme_ends_in_failed(daemon: DaemonProcess) -> None:
    r = daemon_redis(daemon)
    before = {k for k in r.scan_iter(match=f"{daemon.key_prefix}:events:meme:*")}
    status, error = daemon.json("POST", "/v1/memes", {"topic": "how to stab my neighbour"})
    assert status == 422 and error["error"]["code"] == "inappropriate"
    (stream,) = {k for k in r.scan_iter(match=f"{daemon.key_prefix}:events:meme:*")} - before
    meme_id = stream.decode().rsplit(":", 1)[1]
    # the journal appends ``failed`` from a thread of its own: it may land after the answer
    wait_for(
        lambda: history(r, daemon.key_prefix, meme_id)[-1].event.type == "failed",
        5,
        "the failed event",
    )
    events = history(r, daemon.key_prefix, meme_id)
    assert events[0].event.type == "requested" and events[-1].event.type == "failed"
    assert events[-1].event.data == {"code": "inappropriate"}
    assert "completed" not in [e.event.type for e in events]


def test_replay_brings_back_every_meme_from_the_log_alone(daemon: DaemonProcess) -> None:
    r = daemon_redis(daemon)
    made = [daemon.json("POST", "/v1/memes", {"topic": f"replay me {n}"})[1] for n in range(3)]
    erased = made.pop()
    assert daemon.request("DELETE", f"/v1/memes/{erased['id']}")[0] == 204
    before = {m["id"]: daemon.json("GET", f"/v1/memes/{m['id']}")[1] for m in made}
    pictures = {m["id"]: daemon.request("GET", m["image_url"])[2] for m in made}
    assert all(png.startswith(b"\x89PNG") for png in pictures.values())
    listing = daemon.json("GET", "/v1/memes?limit=100")[1]

    # every key outside the log but the checkpoint: with it gone the daemon's projector would
    # replay by itself (the next test); here the admin's replay is what brings them back
    r.delete(*outside_the_log(r, daemon.key_prefix, but=checkpoint_key(daemon.key_prefix)))
    assert daemon.json("GET", f"/v1/memes/{made[0]['id']}")[0] == 404

    done = daemon.admin("replay", "--json", "--data-dir", str(daemon.data_dir))
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["events"] > 0 and counts["shredded"] >= 1
    assert {m["id"]: daemon.json("GET", f"/v1/memes/{m['id']}")[1] for m in made} == before
    assert {m["id"]: daemon.request("GET", m["image_url"])[2] for m in made} == pictures
    assert daemon.json("GET", "/v1/memes?limit=100")[1] == listing
    assert daemon.json("GET", f"/v1/memes/{erased['id']}")[0] == 404


def test_the_daemon_replays_the_log_by_itself_when_its_projections_are_lost(
    daemon: DaemonProcess,
) -> None:
    r = daemon_redis(daemon)
    made = [daemon.json("POST", "/v1/memes", {"topic": f"lost and found {n}"})[1] for n in range(3)]
    before = {m["id"]: daemon.json("GET", f"/v1/memes/{m['id']}")[1] for m in made}
    listing = daemon.json("GET", "/v1/memes?limit=100")[1]
    checkpoint = checkpoint_key(daemon.key_prefix)
    assert r.get(checkpoint) == r.get(f"{daemon.key_prefix}:events:projected")

    r.delete(*outside_the_log(r, daemon.key_prefix))  # the checkpoint too

    wait_for(lambda: r.get(checkpoint) is not None, 10, "the projector's catch-up")
    assert {m["id"]: daemon.json("GET", f"/v1/memes/{m['id']}")[1] for m in made} == before
    assert daemon.json("GET", "/v1/memes?limit=100")[1] == listing
    status, ready = daemon.json("GET", "/readyz")
    assert status == 200 and ready["checks"]["projections"] == "ok", ready


def test_erasure_waits_while_the_projections_catch_up(daemon: DaemonProcess) -> None:
    r = daemon_redis(daemon)
    made = daemon.json("POST", "/v1/memes", {"topic": "erase me after the replay"})[1]
    lock = f"{daemon.key_prefix}:projections:replaying"
    r.set(lock, "another replay", px=30_000)  # holds the daemon's projector back
    try:
        r.delete(checkpoint_key(daemon.key_prefix))
        status, ready = daemon.json("GET", "/readyz")
        assert status == 503 and ready["checks"]["projections"] == "catching up with the event log"
        status, error = daemon.json("DELETE", f"/v1/memes/{made['id']}")
        assert status == 503 and error["error"]["code"] == "store_error", error
    finally:
        r.delete(lock)
    wait_for(lambda: daemon.json("GET", "/readyz")[0] == 200, 10, "the projector's catch-up")
    assert daemon.request("DELETE", f"/v1/memes/{made['id']}")[0] == 204
    assert daemon.json("GET", f"/v1/memes/{made['id']}")[0] == 404


def test_replay_without_a_redis_says_so(tmp_path: Path, daemon: DaemonProcess) -> None:
    if daemon.env.get("REDIS_URL"):
        pytest.skip("the daemon runs on REDIS_URL: replay connects there")
    done = daemon.admin("replay", "--data-dir", str(tmp_path))
    assert done.returncode == 1 and "no embedded Redis socket" in done.stderr
    nowhere = ("--url", f"http://127.0.0.1:{free_port()}", "--window", "0.5")  # nor a daemon
    done = daemon.admin("stats", "--json", "--data-dir", str(tmp_path), *nowhere)
    assert done.returncode == 1 and "no embedded Redis socket" in json.loads(done.stderr)["error"]


def test_the_admin_counts_the_store_and_lists_open_tasks(daemon: DaemonProcess) -> None:
    where = ("--data-dir", str(daemon.data_dir), "--url", daemon.url, "--window", "0.5")
    before = json.loads(daemon.admin("stats", "--json", *where).stdout)["store"]
    assert daemon.json("POST", "/v1/memes", {"topic": "count me", "fresh": True})[0] == 201
    after = json.loads(daemon.admin("stats", "--json", *where).stdout)["store"]
    assert after["memes"] == before["memes"] + 1 and after["events"] > before["events"]
    assert after["redis_used_memory_bytes"] > 0 and isinstance(after["quarantined"], dict)
    text = daemon.admin("stats", *where).stdout
    assert f"memes            {after['memes']}" in text
    listed = daemon.admin("tasks", "--json", *where)
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list)


@pytest.mark.parametrize(
    "module, name", [("memesys.cli.daemon", "memesys"), ("memesys.cli.admin", "memesys-admin")]
)
def test_both_commands_say_their_version(module: str, name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and re.fullmatch(rf"{name} \S+\n", done.stdout), done


def test_retention_expires_old_memes_through_the_log(tmp_path: Path) -> None:
    retention_s = 3.0
    daemon = DaemonProcess(
        tmp_path, {"MEMESYS_STORAGE_RETENTION_DAYS": repr(retention_s / 86400)}
    ).start()
    try:
        old = daemon.json("POST", "/v1/memes", {"topic": "an old meme"})[1]
        assert daemon.request("GET", old["image_url"])[0] == 200
        wait_for(
            lambda: daemon.json("GET", f"/v1/memes/{old['id']}")[0] == 404,
            retention_s + scaled(5.0),
            "the old meme's expiry",
        )
        new = daemon.json("POST", "/v1/memes", {"topic": "a new meme"})[1]
        assert daemon.json("GET", f"/v1/memes/{new['id']}")[0] == 200
        assert daemon.request("GET", old["image_url"])[0] == 404
        listed = [m["id"] for m in daemon.json("GET", "/v1/memes?limit=100")[1]["memes"]]
        assert old["id"] not in listed and new["id"] in listed
        events = history(daemon_redis(daemon), daemon.key_prefix, old["id"])
        assert [e.event.type for e in events][-1] == "expired"
        assert f"retention: meme {old['id']} expired at" in daemon.log_text()
    finally:
        daemon.stop()
