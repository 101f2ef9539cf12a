"""What a supervisor asks the operating system about its children's processes (psutil).

Thespian reports exits late or, rarely, not at all, and cannot tell a stopped process from a
busy one: these answers come from the process table instead.
"""

from __future__ import annotations

import signal

import psutil

__all__ = ["kill_tree", "living_tree", "process_alive", "process_progress"]


def process_alive(pid: int) -> bool:
    """False once ``pid`` has exited (a zombie counts as exited)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def process_progress(pid: int) -> tuple[float, int] | None:
    """What ``pid`` has done so far (CPU seconds, context switches); None if it is stopped
    (SIGSTOP: it can do nothing) or gone. Two readings that differ: it ran in between."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                return None
            cpu, switches = proc.cpu_times(), proc.num_ctx_switches()
    except psutil.Error:
        return None
    return cpu.user + cpu.system, switches.voluntary + switches.involuntary


def living_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that have not exited yet (empty once all have)."""
    try:
        proc = psutil.Process(pid)
        pids = [p.pid for p in proc.children(recursive=True)] + [pid]
    except psutil.NoSuchProcess:
        return []
    return [p for p in pids if process_alive(p)]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (an unresponsive child on shutdown)."""
    try:
        root = psutil.Process(pid)
        victims = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
