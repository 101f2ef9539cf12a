"""The daemon takes its tree with it, and a process manager's restart always works.

SIGKILL of the daemon's main process alone: every actor process, Thespian's admin and logger,
and the embedded redis-server end within 10 s, and the same command starts again and serves.
A tree stranded all the same (its admin stopped, so it could not act) is cleared by the next
start of the same data directory. A start that would collide with a live daemon, or with an
actor system it cannot tell is a leftover of its own, exits 1 with one line saying what to do.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from actors.system import admin_pid
from tests.support.daemon import DaemonProcess, living, names, processes_of
from tests.support.timing import scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.store]

GONE_WITHIN_S = 10.0
STRANDED_FOR_S = 1.0  # how long a stranded tree is watched to stay up before the restart


def kill_main(daemon: DaemonProcess) -> float:
    """SIGKILL the daemon's main process only; when it was killed (monotonic)."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert daemon.proc.wait(5) == -signal.SIGKILL
    return killed


def serves(daemon: DaemonProcess, topic: str) -> None:
    assert daemon.request("GET", "/healthz")[0] == 200
    status, meme = daemon.json("POST", "/v1/memes", {"topic": topic, "fresh": True})
    assert status == 201, meme


def embedded(path: Path) -> DaemonProcess:
    path.mkdir(exist_ok=True)
    return DaemonProcess(path, extra_env={"REDIS_URL": ""})  # the daemon owns its Redis


def test_sigkill_of_the_daemon_alone_ends_its_tree_and_the_same_command_starts_again(
    tmp_path: Path,
) -> None:
    daemon = embedded(tmp_path).start()
    tree: list[psutil.Process] = []
    try:
        tree = processes_of(daemon)
        # The admin, its logger, the supervisors and workers, and the embedded redis-server.
        assert len(tree) >= 15 and names(tree).count("redis-server") == 1, names(tree)
        killed = kill_main(daemon)
        wait_for(lambda: not living(tree), GONE_WITHIN_S, "the tree to end with its daemon")
        took = time.monotonic() - killed
        print(f"\nall {len(tree)} processes of the tree gone {took * 1000:.0f} ms after the kill")
        assert took < scaled(GONE_WITHIN_S)

        again = daemon.again().start()
        try:
            serves(again, "restarted by a process manager")
        finally:
            assert again.stop() == []
    finally:
        for proc in living(tree):  # never left behind, even by a failing test
            proc.kill()
        daemon.stop()


def test_a_tree_stranded_on_the_data_directory_is_cleared_by_the_next_start(
    tmp_path: Path,
) -> None:
    daemon = embedded(tmp_path).start()
    tree: list[psutil.Process] = []
    try:
        tree = processes_of(daemon)
        admin = psutil.Process(admin_pid(daemon.admin_port) or 0)
        admin.suspend()  # SIGSTOP: the admin cannot take the tree down when the daemon dies
        kill_main(daemon)
        time.sleep(STRANDED_FOR_S)
        assert len(living(tree)) == len(tree), "the tree was not stranded"

        again = daemon.again().start()
        try:
            assert not living(tree), names(living(tree))
            assert "of its actor tree still run" in again.log_text()
            serves(again, "after a stranded tree")
        finally:
            assert again.stop() == []
    finally:
        for proc in living(tree):
            proc.kill()
        daemon.stop()


def test_a_second_daemon_on_the_data_directory_of_a_running_one_is_refused(
    tmp_path: Path,
) -> None:
    first = embedded(tmp_path).start()
    try:
        second = DaemonProcess(tmp_path)  # its own ports, the same data directory
        with pytest.raises(RuntimeError, match="daemon exited with 1") as refused:
            second.start()
        assert second.stop() == []
        message = str(refused.value)
        assert f"a memesys daemon (pid {first.proc.pid}) already runs" in message
        assert f"memesys-admin --admin-port {first.admin_port} shutdown" in message
        serves(first, "still the only one")
    finally:
        assert first.stop() == []


def test_an_admin_port_taken_by_another_daemon_is_refused_naming_memesys_admin_shutdown(
    tmp_path: Path,
) -> None:
    other = embedded(tmp_path / "other").start()
    mine = embedded(tmp_path / "mine")
    try:
        mine.admin_port = other.admin_port
        with pytest.raises(RuntimeError, match="daemon exited with 1") as refused:
            mine.start()
        assert mine.stop() == []
        assert f"memesys-admin --admin-port {other.admin_port} shutdown" in str(refused.value)

        assert mine.admin("shutdown").returncode == 0  # what the message says to do
        assert other.proc is not None and other.proc.wait(scaled(10)) == 0
        mine = mine.again().start()
        serves(mine, "once the port was free")
    finally:
        assert mine.stop() == []
        assert other.stop() == []
