"""Accepted tasks survive the death of every process: 200 tasks are accepted (each 202 means
recorded on disk), every process of the daemon is SIGKILLed at once right after the last 202,
while some have finished, some are running and the rest wait, and the same command started
again finishes every one of them, each exactly once: one ``succeeded`` record naming one
meme, and one meme completed per task (none made twice, none lost), its image served.

A task whose meme was saved when the kill came, before its ledger recorded the outcome, is the
case that makes a meme twice if the restart runs it again. The kill hits that window only
sometimes, so the test also leaves one such task on purpose: a task recorded ``running`` on a
meme already made. A meme the kill cut short is made again under a new id, and its own
stream ends ``failed`` (``worker_lost``): no meme's stream is left without an end.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memesys.domain.events import COMPLETED, FAILED
from memesys.domain.ids import new_id
from memesys.storage.tasks import TaskStore
from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.daemon import DaemonProcess, daemon_redis, living, names, processes_of
from tests.support.provider import fake_provider_fixture, provider_env
from tests.support.timing import scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.store]

TASKS = 200
FINISH_WITHIN_S = 90.0

# Calls that take a while, so the kill finds memes in flight; a limit that leaves them room.
fake = fake_provider_fixture(FakeConfig(latency_s=0.05, jitter_s=0.05, seed=7))
SETTINGS = {"MEMESYS_LLM_RATE_LIMIT_RPS": "1000", "REDIS_URL": ""}  # the daemon owns its Redis


def submit(daemon: DaemonProcess, n: int) -> str:
    status, accepted = daemon.json(
        "POST", "/v1/memes?async=true", {"topic": f"task {n} of a crash", "fresh": True}
    )
    assert status == 202, accepted
    return str(accepted["task_id"])


def open_tasks(daemon: DaemonProcess) -> int:
    client = daemon_redis(daemon)
    try:
        return int(client.scard(f"{daemon.key_prefix}:tasks:open"))
    finally:
        client.close()


def meme_events(daemon: DaemonProcess) -> list[tuple[str, str]]:
    """Every meme event's entity and type in the global stream, in append order."""
    client = daemon_redis(daemon)
    try:
        entries = client.xrange(f"{daemon.key_prefix}:events:all")
    finally:
        client.close()
    pairs = [(fields[b"entity"].decode(), fields[b"type"].decode()) for _, fields in entries]
    return [(entity, kind) for entity, kind in pairs if entity.startswith("meme:")]


def saved_but_not_recorded(daemon: DaemonProcess) -> tuple[str, str]:
    """A meme made for a request, and a task recorded ``running`` on it: what a ledger killed
    between the meme's save and its outcome's record leaves (the task's id, the meme's)."""
    request = {"topic": "saved, then the kill", "fresh": True}
    status, meme = daemon.json("POST", "/v1/memes", request)
    assert status == 201, meme
    client = daemon_redis(daemon)
    try:
        task_id, now = new_id(), time.time()
        TaskStore(client, daemon.key_prefix, 3600).put(
            {
                "id": task_id,
                "status": "running",
                "stage": "started",
                "progress": 0.05,
                "request": request,
                "making": meme["id"],
                "created_at": now,
                "updated_at": now,
            }
        )
    finally:
        client.close()
    return task_id, str(meme["id"])


def kill_everything(daemon: DaemonProcess) -> list[str]:
    """SIGKILL the daemon and every process of its tree (the embedded redis-server too), the
    daemon first; the names of what was killed."""
    assert daemon.proc is not None
    tree = processes_of(daemon)
    daemon.proc.send_signal(signal.SIGKILL)
    for proc in tree:
        proc.send_signal(signal.SIGKILL)
    assert daemon.proc.wait(5) == -signal.SIGKILL
    wait_for(lambda: not living(tree), 5, "every killed process to be gone")
    return ["memesys", *names(tree)]


def test_accepted_tasks_all_succeed_exactly_once_after_a_sigkill_of_every_process(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    daemon = DaemonProcess(tmp_path, extra_env=provider_env(fake, **SETTINGS)).start()
    again: DaemonProcess | None = None
    try:
        left_task, its_meme = saved_but_not_recorded(daemon)
        with ThreadPoolExecutor(8) as pool:
            task_ids = list(pool.map(lambda n: submit(daemon, n), range(TASKS)))
        assert len(set(task_ids)) == TASKS
        killed = kill_everything(daemon)
        assert killed.count("redis-server") == 1 and len(killed) >= 15, killed

        again = daemon.again().start()
        was_open = open_tasks(again)
        assert was_open > 0  # the kill came after the last 202: these were kept, on disk
        started = time.monotonic()
        wait_for(
            lambda: open_tasks(again) == 0,
            scaled(FINISH_WITHIN_S),
            "every open task to finish after the restart",
            interval=0.1,
        )
        print(
            f"\n{was_open} of {TASKS} tasks open at the kill of {len(killed)} processes; all"
            f" finished {time.monotonic() - started:.1f} s after the restart"
        )

        status, left = again.json("GET", f"/v1/tasks/{left_task}")
        assert status == 200 and left["status"] == "succeeded", left
        assert left["meme"]["id"] == its_meme  # finished with its meme, not made again

        made = [f"meme:{its_meme}"]
        for task_id in task_ids:
            status, task = again.json("GET", f"/v1/tasks/{task_id}")
            assert status == 200 and task["status"] == "succeeded", task
            assert again.request("GET", task["meme"]["image_url"])[0] == 200
            made.append(f"meme:{task['meme']['id']}")
        assert len(set(made)) == TASKS + 1  # one meme each
        events = meme_events(again)
        completed = [entity for entity, kind in events if kind == COMPLETED]
        twice = sorted({m for m in completed if completed.count(m) > 1})
        assert not twice, f"memes completed twice: {twice}"
        orphans = sorted(set(completed) - set(made))
        assert not orphans, f"memes completed that no task names (made again): {orphans}"
        assert sorted(completed) == sorted(made)
        # A meme the kill cut short has its stream ended failed (worker_lost) by the restart.
        ended = {entity for entity, kind in events if kind in (COMPLETED, FAILED)}
        unended = sorted({entity for entity, _ in events} - ended)
        assert not unended, f"meme streams left without an end: {unended}"
        cut_short = sorted({entity for entity, kind in events if kind == FAILED})
        print(f"{len(cut_short)} memes cut short by the kill, their streams ended failed")
        print(json.dumps({"tasks": TASKS + 1, "memes_completed": len(completed)}))
    finally:
        for each in (again, daemon):
            if each is not None:
                assert each.stop() == []
