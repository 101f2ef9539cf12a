"""An actor system lives no longer than the process that started it: when the starter is
SIGKILLed, the admin (double-forked away from it by Thespian) takes itself, its logger and
every actor down, and the admin port is free again. Real processes, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from actors.system import admin_pid, admin_running, session_processes
from memesys.testing.ports import free_port
from tests.support.timing import scaled, wait_for

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 10.0  # the promise; it takes milliseconds

# A starter: a root supervisor over a sub-supervisor over two workers, then it waits.
STARTER = """
import sys, time
from actors.spec import ChildSpec, SupervisorArgs
from actors.system import SystemConfig, logging_config, start_root, start_system
from tests.support.sample_actors import Journal

port, journal = int(sys.argv[1]), Journal(sys.argv[2])
worker = lambda name: ChildSpec(name, "tests.support.sample_actors.Recorder", journal)
sub = ChildSpec("sub", "actors.supervisor.Supervisor", SupervisorArgs((worker("w1"), worker("w2"))))
root = ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs((sub, worker("w3"))))
asys = start_system(SystemConfig(port, log_defs=logging_config("WARNING")))
start_root(asys, root, port, 10.0)
print("started", flush=True)
time.sleep(120)
"""


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_system_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    port = free_port()
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(port), str(tmp_path / "journal")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    system: list[psutil.Process] = []
    try:
        assert starter.stdout is not None and starter.stdout.readline() == "started\n"
        admin = admin_pid(port)
        assert admin is not None
        system = session_processes(os.getsid(admin))
        # The admin, its logger, two supervisors and three workers.
        assert len(system) == 7, [p.cmdline() for p in system]
        assert all(alive(p) for p in system)

        starter.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        starter.wait(5)
        wait_for(lambda: not any(alive(p) for p in system), GONE_WITHIN_S, "the system to end")
        took = time.monotonic() - killed
        print(f"\nall {len(system)} processes of the system gone {took * 1000:.0f} ms after")
        assert took < scaled(GONE_WITHIN_S)
        assert not admin_running(port)
    finally:
        starter.kill()
        starter.wait()
        for proc in system:  # never left behind, even by a failing test
            if alive(proc):
                proc.kill()
