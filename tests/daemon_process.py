"""Run the real daemon (``python run_system.py``) as a subprocess on free loopback ports."""

from __future__ import annotations

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

from actors.system import admin_pid, session_processes
from memesys.testing.ports import free_port
from tests.redis_fixtures import shared_prefix

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class DaemonProcess:
    """One daemon; ``REDIS_URL`` comes from ``MEMESYS_TEST_REDIS_URL`` (else embedded Redis)."""

    def __init__(self, data_dir: Path, extra_env: dict | None = None) -> None:
        self.data_dir = data_dir
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
                "MEMESYS_SYSTEM_LOG_LEVEL": "WARNING",
            }
        )
        if os.environ.get("MEMESYS_TEST_REDIS_URL"):
            self.env["REDIS_URL"] = os.environ["MEMESYS_TEST_REDIS_URL"]
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.sid: int | None = None

    def start(self) -> DaemonProcess:
        self.log = open(self.data_dir / f"daemon-{self.port}.log", "ab")
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
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
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
            time.sleep(0.05)
        pid = admin_pid(self.admin_port)  # stop what did start: nothing may outlive the test
        self.sid = os.getsid(pid) if pid else None
        left = self.stop()
        raise RuntimeError(
            f"daemon not ready in {START_TIMEOUT_S} s (killed left over: {left}): {self.log_text()}"
        )

    def log_text(self) -> str:
        return (self.data_dir / f"daemon-{self.port}.log").read_text(errors="replace")[-4000:]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict, bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
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
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            children = []
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
