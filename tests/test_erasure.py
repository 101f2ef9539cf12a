"""Erasure covers task records (issue 7, item 8).

DELETE /v1/memes/{id} erases the meme, its PNG and cache entries, and scrubs the task record
of an async meme: the task stays (its id, status and times), its request (the topic) and its
meme are gone. One audit line (``memesys.audit``) records the erasure with the ids and the
time, and no content.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis

from memesys.storage.tasks import TaskStore
from tests.support.daemon import DaemonProcess, daemon_redis, wait_task
from tests.support.records import letters
from tests.support.redis_server import values_under

pytestmark = pytest.mark.store
IDS = r"(?: \w+=\S+)*"  # the ids a text log line may end with (trace_id=..., span_id=...)


def succeeded(task_id: str, meme_id: str, topic: str) -> dict:
    now = time.time()
    return {
        "id": task_id,
        "status": "succeeded",
        "stage": "done",
        "progress": 1.0,
        "request": {"topic": topic, "style": "dry", "seed": 3},
        "meme_id": meme_id,
        "created_at": now,
        "updated_at": now,
    }


def test_scrub_keeps_the_task_and_drops_topic_and_meme(
    client: redis.Redis,
    prefix: str,
) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    tasks.put(succeeded("t1", "m1", "a secret topic"))
    assert client.get(f"{prefix}:taskof:m1") == b"t1"
    assert tasks.scrub_meme("m1") == "t1"
    task = tasks.get("t1")
    assert task["status"] == "succeeded" and task["progress"] == 1.0
    assert "request" not in task and "meme_id" not in task and task["erased_at"] > 0
    assert b"secret" not in client.get(f"{prefix}:task:t1")
    assert 0 < client.ttl(f"{prefix}:task:t1") <= 600  # still expires as before
    assert not client.exists(f"{prefix}:taskof:m1")
    assert tasks.scrub_meme("m1") is None  # nothing left to scrub
    assert tasks.scrub_meme("never-made") is None


def test_scrub_leaves_a_task_that_made_another_meme(
    client: redis.Redis,
    prefix: str,
) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    tasks.put(succeeded("t1", "m2", "topic"))
    client.set(f"{prefix}:taskof:m1", "t1")  # a stale pointer
    assert tasks.scrub_meme("m1") == "t1"
    assert tasks.get("t1")["request"]["topic"] == "topic"  # not the erased meme's task
    assert not client.exists(f"{prefix}:taskof:m1")


def test_scrub_erases_a_quarantined_copy_of_the_task(
    client: redis.Redis,
    prefix: str,
) -> None:
    tasks = TaskStore(client, prefix, ttl_s=600)
    tasks.put(succeeded("t1", "m1", "a secret topic"))
    client.set(f"{prefix}:task:t1", b'{"topic": "a secret topic", "trunc')
    assert tasks.get("t1")["status"] == "failed"  # quarantined: its copy holds the topic
    assert tasks.scrub_meme("m1") == "t1"
    assert not client.exists(f"{prefix}:quarantine:task:t1")


@pytest.mark.slow
def test_delete_scrubs_the_task_of_an_async_meme_and_leaves_an_audit_line(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    r = daemon_redis(daemon)
    topic = f"erase me {letters(8)}"
    try:
        status, accepted = daemon.json(
            "POST", "/v1/memes?async=true", {"topic": topic, "style": "whispered"}
        )
        assert status == 202
        task = wait_task(daemon, accepted["task_id"])
        assert task["status"] == "succeeded"
        meme_id = task["meme"]["id"]
        assert topic.encode() in values_under(r, daemon.key_prefix)

        assert daemon.request("DELETE", f"/v1/memes/{meme_id}")[0] == 204
        status, after = daemon.json("GET", accepted["status_url"])
        assert status == 200 and after["status"] == "succeeded"  # the task stays ...
        assert "meme" not in after  # ... without its meme
        assert daemon.json("GET", f"/v1/memes/{meme_id}")[0] == 404
        stored = values_under(r, daemon.key_prefix)
        assert topic.encode() not in stored and b"whispered" not in stored
        # not even a pointer to it, but in the log: its stream, sealed with a destroyed key
        assert meme_id.encode() not in values_under(
            r, daemon.key_prefix, f"{daemon.key_prefix}:events:"
        )
        assert r.get(f"{daemon.key_prefix}:events:key:meme:{meme_id}") is None

        sync = daemon.json("POST", "/v1/memes", {"topic": f"{topic} sync"})[1]["id"]
        assert daemon.request("DELETE", f"/v1/memes/{sync}")[0] == 204
        assert daemon.request("DELETE", f"/v1/memes/{sync}")[0] == 404  # nothing left

        log = daemon.log_text()
        lines = [line for line in log.splitlines() if "memesys.audit" in line]
        assert len(lines) == 2, lines  # one per erasure, none for the 404
        assert re.search(
            rf"erasure: meme {meme_id} erased at \d{{4}}-\d\d-\d\dT[\d:.]+\+00:00; "
            rf"its task {accepted['task_id']} scrubbed{IDS}$",
            lines[0],
        ), lines[0]
        assert re.search(rf"erasure: meme {sync} erased at \S+{IDS}$", lines[1]), lines[1]
        assert "erase me" not in "\n".join(lines)  # no content
    finally:
        r.close()
        assert daemon.stop() == []
