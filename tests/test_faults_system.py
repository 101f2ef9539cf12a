"""The actor system's own processes: when Thespian's logger, its admin or the root supervisor
dies, the daemon answers 503 meanwhile and exits non-zero within seconds (a process manager
restarts it); an ordered ``memesys-admin shutdown`` still exits 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from actors.system import admin_pid
from tests.daemon_process import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.store]

EXIT_WITHIN_S = 10.0
ADMIN_SHUTDOWN_WITHIN_S = 6.0


def system_processes(daemon: DaemonProcess) -> dict[str, int]:
    tree = json.loads(daemon.admin("status", "--json").stdout)
    admin = admin_pid(daemon.admin_port)
    loggers = [p.pid for p in psutil.Process(admin).children() if p.pid != tree["pid"]]
    assert len(loggers) == 1, loggers
    return {"logger": loggers[0], "admin": admin, "root": tree["pid"]}


class Load:
    """Clients posting memes back to back; every answer's status (or the connection error)."""

    def __init__(self, daemon: DaemonProcess, clients: int = 3) -> None:
        self.daemon, self.answers, self.stop = daemon, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                status, headers, body = self.daemon.request(
                    "POST", "/v1/memes", {"topic": f"load {i} {n}", "fresh": True}
                )
                self.answers.append((status, headers.get("Retry-After"), body))
            except OSError:  # the daemon has exited: nothing listens any more
                return

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.parametrize("victim", ["logger", "admin", "root"])
def test_a_dead_system_process_stops_the_daemon_non_zero(tmp_path, victim):
    daemon = DaemonProcess(tmp_path).start()
    try:
        pid = system_processes(daemon)[victim]
        with Load(daemon) as load:
            time.sleep(0.5)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            status = daemon.proc.wait(EXIT_WITHIN_S + 5)
            took = time.monotonic() - killed_at
        print(f"{victim}: exited {status} after {took:.2f} s, {len(load.answers)} answers")
        assert status != 0, daemon.log_text()
        assert took < EXIT_WITHIN_S, f"exited after {took:.1f} s"
        assert "stopping the daemon" in daemon.log_text()
        failed = [(s, after, body) for s, after, body in load.answers if s != 201]
        assert all(s == 503 and after for s, after, _ in failed), failed
        assert not any(b"ActorAddr" in body or b"dead_address" in body for *_, body in failed)
    finally:
        assert daemon.stop() == []


def test_an_ordered_admin_shutdown_still_exits_zero_at_once(tmp_path):
    daemon = DaemonProcess(tmp_path).start()
    try:
        started = time.monotonic()
        assert daemon.admin("shutdown").returncode == 0
        admin_took = time.monotonic() - started
        assert daemon.proc.wait(EXIT_WITHIN_S) == 0
        took = time.monotonic() - started
        print(
            f"memesys-admin shutdown took {admin_took:.2f} s, the daemon exited after {took:.2f} s"
        )
        # Thespian's own shutdown waits 10 s for an admin that the daemon killed too early.
        assert admin_took < ADMIN_SHUTDOWN_WITHIN_S
        assert took < EXIT_WITHIN_S
        assert "stopped on request" in daemon.log_text()
    finally:
        assert daemon.stop() == []
