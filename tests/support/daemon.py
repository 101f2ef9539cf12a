"""The real daemon (``python run_system.py``) as a subprocess on free loopback ports, and what
tests read of it: its supervision tree, its tasks, its Redis."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

from actors.system import admin_pid, session_processes
from memesys.storage.connection import connect
from memesys.testing.ports import free_port
from tests.support.redis_server import shared_prefix
from tests.support.timing import scaled, wait_for

ROOT = Path(__file__).resolve().parents[2]  # the repository
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class DaemonProcess:
    """One daemon; ``REDIS_URL`` comes from ``MEMESYS_TEST_REDIS_URL`` (else embedded Redis).
    Its output goes to ``log_dir`` (default: ``data_dir``; elsewhere when the test fills the
    data disk); ``stderr_apart``: its stderr (the log) to a file of its own
    (:meth:`stderr_text`), not with its stdout."""

    def __init__(
        self,
        data_dir: Path,
        extra_env: dict | None = None,
        log_dir: Path | None = None,
        stderr_apart: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir or data_dir
        self.stderr_apart = stderr_apart
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key_prefix = shared_prefix(f"memesys-test-{uuid.uuid4().hex[:8]}")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MEMESYS_") and k not in ("REDIS_URL", "OPENAI_API_KEY")
        }
        self.env.update(
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "MEMESYS_REDIS_KEY_PREFIX": self.key_prefix,
                "MEMESYS_LOG_LEVEL": "WARNING",
            }
        )
        if os.environ.get("MEMESYS_TEST_REDIS_URL"):
            self.env["REDIS_URL"] = os.environ["MEMESYS_TEST_REDIS_URL"]
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.sid: int | None = None

    def start(self) -> DaemonProcess:
        self.log = open(self.log_dir / f"daemon-{self.port}.log", "ab")
        err = self.stderr_path.open("ab") if self.stderr_apart else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "run_system.py",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=err or subprocess.STDOUT,
        )
        if err is not None:
            err.close()  # the daemon has its own descriptor
        deadline = time.monotonic() + scaled(START_TIMEOUT_S)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    pid = admin_pid(self.admin_port)
                    self.sid = os.getsid(pid) if pid else None
                    return self
            except OSError:
                pass
            time.sleep(0.05)  # the poll of this wait: it also watches the process exit
        pid = admin_pid(self.admin_port)  # stop what did start: nothing may outlive the test
        self.sid = os.getsid(pid) if pid else None
        left = self.stop()
        raise RuntimeError(
            f"daemon not ready in {scaled(START_TIMEOUT_S):g} s (killed left over: {left}): "
            + self.log_text()
        )

    def again(self) -> DaemonProcess:
        """The same command (ports, data directory, environment) as a new, unstarted process:
        what a process manager runs to restart the daemon."""
        again = copy.copy(self)
        again.proc, again.sid = None, None
        return again

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"daemon-{self.port}.stderr"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_text(self) -> str:
        return self.full_log()[-4000:]

    def full_log(self) -> str:
        out = (self.log_dir / f"daemon-{self.port}.log").read_text(errors="replace")
        return out + self.stderr_text() if self.stderr_apart else out

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict, bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, payload = self.request(method, path, body, **kw)
        return status, (json.loads(payload) if payload else None)

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "memesys.cli.admin",
                "--admin-port",
                str(self.admin_port),
                *args,
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> list[str]:
        """SIGTERM, wait, and return what is left running (must be empty)."""
        if self.proc is None:
            return []
        children = []
        if self.proc.poll() is None:  # an exited daemon's pid may be another process's now
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
                self.proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if self.sid is not None:
            left += session_processes(self.sid)
        for proc in left:  # never leave them behind, but report them
            proc.kill()
        return [f"{p.pid}" for p in left]


def tree(daemon: DaemonProcess) -> dict:
    """The supervision tree as ``memesys-admin status --json`` prints it."""
    result = daemon.admin("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def child(node: dict, *names: str) -> dict:
    """The node at path ``names`` below ``node`` of a :func:`tree`."""
    for name in names:
        node = next(c for c in node["children"] if c["name"] == name)
    return node


def restarts(node: dict) -> dict[str, int]:
    """Every node's restarts below ``node`` of a :func:`tree`, by path ("redis/server")."""
    out: dict[str, int] = {}

    def walk(node: dict, path: str) -> None:
        for each in node.get("children", []):
            name = f"{path}/{each['name']}" if path else each["name"]
            out[name] = each["restarts"]
            walk(each, name)

    walk(node, "")
    return out


def wait_task(daemon: DaemonProcess, task_id: str, timeout: float = 20.0) -> dict:
    """The task once it has finished (succeeded, failed or been cancelled); fails the test after
    ``timeout``."""

    def finished() -> dict | None:
        status, task = daemon.json("GET", f"/v1/tasks/{task_id}")
        assert status == 200, task
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, timeout, what=f"task {task_id} to finish", interval=0.05)


def daemon_redis(daemon: DaemonProcess) -> redis.Redis:
    """A client of the daemon's own Redis (its embedded server, or the configured one)."""
    url = daemon.env.get("REDIS_URL") or f"unix://{daemon.data_dir / 'redis' / 'redis.sock'}"
    return connect(url)


def processes_of(daemon: DaemonProcess) -> list[psutil.Process]:
    """Every process of the daemon's tree but the daemon itself, collected from /proc: the
    daemon's children, the admin (double-forked away from it) and everything below it, and
    whatever else is in the admin's session."""
    assert daemon.proc is not None and daemon.sid is not None
    main = psutil.Process(daemon.proc.pid)
    pid = admin_pid(daemon.admin_port)
    assert pid is not None
    admin = psutil.Process(pid)
    found = {
        admin,
        *admin.children(recursive=True),
        *main.children(recursive=True),
        *session_processes(daemon.sid),
    }
    return sorted(found, key=lambda p: p.pid)


def living(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a reused pid is another process: ``is_running`` checks)."""
    out = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def names(processes: list[psutil.Process]) -> list[str]:
    return [proc.name() for proc in processes]
