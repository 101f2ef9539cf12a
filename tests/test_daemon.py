"""End to end: the real daemon as a subprocess, real HTTP, real SIGKILLs, no process left."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import psutil
import pytest
from PIL import Image

from tests.support.daemon import DaemonProcess, wait_task
from tests.support.timing import scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.store]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


def make_meme(daemon, topic="mondays at the office", **fields):
    status, meme = daemon.json("POST", "/v1/memes", {"topic": topic, **fields})
    assert status == 201, meme
    return meme


def generator_pids(daemon) -> dict[str, int]:
    result = daemon.admin("status", "--json")
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    pool = next(c for c in tree["children"] if c["name"] == "generator")
    return {w["name"]: w["pid"] for w in pool["children"] if w["state"] == "running"}


def test_a_meme_is_made_stored_and_served(daemon):
    meme = make_meme(daemon, fresh=True)
    for key in (
        "id",
        "topic",
        "format",
        "top_text",
        "bottom_text",
        "image_url",
        "scores",
        "verification",
        "provider",
        "cached",
        "created_at",
        "timings",
        "trace_id",
    ):
        assert key in meme
    assert meme["provider"]["name"] == "offline" and meme["cached"] is False
    assert set(meme["timings"]) >= {"select_write", "judge", "render", "store", "total"}
    status, stored = daemon.json("GET", f"/v1/memes/{meme['id']}")
    assert status == 200 and stored["top_text"] == meme["top_text"]
    status, headers, png = daemon.request("GET", meme["image_url"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(png))
    image.verify()
    assert image.size == (640, 640)


def test_same_request_is_served_from_cache_unless_fresh(daemon):
    first = make_meme(daemon, "cache me if you can", seed=7)
    second = make_meme(daemon, "Cache me   if you can", seed=7)
    assert second["cached"] is True and second["id"] == first["id"]
    third = make_meme(daemon, "cache me if you can", seed=7, fresh=True)
    assert third["cached"] is False and third["id"] != first["id"]


def test_generator_workers_killed_the_next_meme_still_comes(daemon):
    before = generator_pids(daemon)
    assert len(before) == 2
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    meme = make_meme(daemon, "resilience engineering", fresh=True)
    assert meme["id"]

    def replaced() -> bool:
        after = generator_pids(daemon)
        return len(after) == 2 and not set(after.values()) & set(before.values())

    wait_for(replaced, 5, "both generator workers replaced", interval=0.05)
    for pid in before.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_list_and_delete(daemon):
    made = [make_meme(daemon, f"topic number {i}", fresh=True)["id"] for i in range(3)]
    status, page = daemon.json("GET", "/v1/memes?limit=2")
    assert status == 200 and [m["id"] for m in page["memes"]] == made[::-1][:2]
    status, page2 = daemon.json("GET", f"/v1/memes?limit=2&cursor={page['next_cursor']}")
    assert status == 200 and page2["memes"][0]["id"] == made[0]
    assert daemon.request("DELETE", f"/v1/memes/{made[0]}")[0] == 204
    assert daemon.json("GET", f"/v1/memes/{made[0]}")[0] == 404
    assert daemon.request("GET", f"/v1/memes/{made[0]}/image.png")[0] == 404
    assert daemon.request("DELETE", f"/v1/memes/{made[0]}")[0] == 404


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b'{"topic":', 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_field"),
        (b"{}", 422, "invalid_field"),
        (b'{"topic": ""}', 422, "invalid_field"),
        (b'{"topic": "   "}', 422, "invalid_field"),
        (b'{"topic": 42}', 422, "invalid_field"),
        (json.dumps({"topic": "x" * 201}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "ok", "seed": -1}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "ok", "seed": True}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "ok", "fresh": "yes"}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "ok", "format": "no-such-format"}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "ok", "colour": "red"}).encode(), 422, "invalid_field"),
        (json.dumps({"topic": "bad\u0000byte"}).encode(), 422, "invalid_field"),
        (b"\xff\xfe", 400, "malformed_json"),
        (json.dumps({"topic": "y" * 20_000}).encode(), 413, "body_too_large"),
    ],
)
def test_bad_input_gets_a_clear_json_error(daemon, raw, status, code):
    got, _, body = daemon.request("POST", "/v1/memes", raw=raw)
    assert got == status
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/memes/nope", 404),
        ("/v1/memes/..%2F..%2Fetc", 404),
        ("/v1/memes/a%20b/image.png", 404),
        ("/v1/memes?limit=0", 422),
        ("/v1/memes?limit=abc", 422),
        ("/v1/memes?cursor=forged", 422),
        ("/no/such/route", 404),
    ],
)
def test_bad_reads_get_json_errors(daemon, path, status):
    got, _, body = daemon.request("GET", path)
    assert got == status
    assert json.loads(body)["error"]["code"]


def test_operational_endpoints(daemon):
    assert daemon.json("GET", "/healthz") == (200, {"status": "ok"})
    status, ready = daemon.json("GET", "/readyz")
    assert status == 200 and ready["checks"] == {"actors": "ok", "store": "ok", "projections": "ok"}
    status, formats = daemon.json("GET", "/v1/formats")
    assert status == 200 and len(formats["formats"]) >= 20
    status, _, metrics = daemon.request("GET", "/metrics")
    assert status == 200 and b"memesys_http_requests_total" in metrics
    status, spec = daemon.json("GET", "/openapi.json")
    assert status == 200 and "/v1/memes" in spec["paths"]
    status, _, page = daemon.request("GET", "/")
    assert status == 200 and b"<form" in page


def test_admin_cli(daemon):
    ping = daemon.admin("ping")
    assert ping.returncode == 0 and "pong from memesys" in ping.stdout
    status = daemon.admin("status")
    assert status.returncode == 0
    for name in ("memesys", "store", "render", "generator", "worker-0"):
        assert name in status.stdout
    before = generator_pids(daemon)["worker-1"]
    restart = daemon.admin("restart", "generator/worker-1")
    assert restart.returncode == 0, restart.stderr
    assert generator_pids(daemon)["worker-1"] != before
    missing = daemon.admin("restart", "generator/worker-9")
    assert missing.returncode != 0 and "worker-9" in missing.stderr


def test_admin_never_starts_a_system(tmp_path):
    d = DaemonProcess(tmp_path)  # not started
    result = d.admin("status")
    assert result.returncode != 0 and "no actor system is running" in result.stderr
    from actors.system import admin_running

    assert not admin_running(d.admin_port)


def test_memes_survive_a_daemon_restart(tmp_path):
    first = DaemonProcess(tmp_path).start()
    try:
        meme = make_meme(first, "persistence", fresh=True)
        png = first.request("GET", meme["image_url"])[2]
    finally:
        assert first.stop() == []
    second = DaemonProcess(tmp_path)
    second.key_prefix = first.key_prefix
    second.env["MEMESYS_REDIS_KEY_PREFIX"] = first.key_prefix
    second.start()
    try:
        status, stored = second.json("GET", f"/v1/memes/{meme['id']}")
        assert status == 200 and stored["top_text"] == meme["top_text"]
        status, headers, again = second.request("GET", meme["image_url"])
        assert status == 200 and again == png  # byte-identical, from its file
        assert headers["ETag"] == f'"{meme["image"]["sha256"]}"'
    finally:
        assert second.stop() == []


def test_admin_shutdown_stops_the_daemon(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        result = d.admin("shutdown")
        assert result.returncode == 0, result.stderr
        assert d.proc.wait(20) == 0
    finally:
        assert d.stop() == []


def tasks_group(daemon) -> dict[str, dict]:
    tree = json.loads(daemon.admin("status", "--json").stdout)
    group = next(c for c in tree["children"] if c["name"] == "tasks")
    assert group["strategy"] == "one_for_all"
    return {c["name"]: c for c in group["children"]}


def test_async_generation_is_recorded_then_done(daemon):
    status, _headers, body = daemon.request(
        "POST", "/v1/memes?async=true", {"topic": "queues and patience"}
    )
    assert status == 202
    accepted = json.loads(body)
    assert accepted["status_url"] == f"/v1/tasks/{accepted['task_id']}"
    task = wait_task(daemon, accepted["task_id"])
    assert task["status"] == "succeeded" and task["progress"] == 1.0
    assert task["meme"]["topic"] == "queues and patience"
    assert daemon.request("GET", task["meme"]["image_url"])[0] == 200
    assert daemon.json("GET", "/v1/tasks/no-such-task")[0] == 404
    assert daemon.json("POST", "/v1/memes?async=maybe", {"topic": "x"})[0] == 422


def test_killed_runner_restarts_its_group_and_the_task_still_completes(daemon):
    before = tasks_group(daemon)
    os.kill(before["runner"]["pid"], signal.SIGKILL)
    # A submission that meets the group while it restarts is refused 503 (worker_lost or
    # unavailable, with Retry-After); a client that honours it is accepted once the group is up.
    deadline = time.monotonic() + scaled(10.0)
    while True:
        status, headers, body = daemon.request(
            "POST", "/v1/memes?async=true", {"topic": "phoenix tasks"}
        )
        accepted = json.loads(body)
        if status != 503 or time.monotonic() > deadline:
            break
        assert accepted["error"]["code"] in ("worker_lost", "unavailable"), accepted
        time.sleep(min(float(headers["Retry-After"]), 0.2))  # the client's back-off, shortened
    assert status == 202, accepted
    task = wait_task(daemon, accepted["task_id"])
    assert task["status"] == "succeeded", task
    after = tasks_group(daemon)
    for name in ("ledger", "runner"):  # one_for_all: the ledger restarted with the runner
        assert after[name]["restarts"] == before[name]["restarts"] + 1
        assert after[name]["pid"] != before[name]["pid"]
