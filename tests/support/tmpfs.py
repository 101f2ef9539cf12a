"""A small disk of the test's own: a tmpfs mounted on a directory, and a file that fills it.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test is skipped with the
reason. The mount is always undone: what holds files on it (a redis-server) must be stopped
first; a mount still busy after a few seconds is detached lazily so that none is left behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

UMOUNT_TIMEOUT_S = 5.0
CHUNK = 64 * 1024


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """``path`` with a tmpfs of ``size`` mounted on it for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    try:
        yield path
    finally:
        deadline = time.monotonic() + UMOUNT_TIMEOUT_S
        while subprocess.run(["umount", str(path)], capture_output=True, timeout=10).returncode:
            if time.monotonic() > deadline:
                subprocess.run(["umount", "-l", str(path)], check=True, timeout=10)
                pytest.fail(f"{path} was still busy {UMOUNT_TIMEOUT_S:g} s after the test")
            time.sleep(0.05)


def fill(filler: Path) -> int:
    """Write ``filler`` until its disk is full (unbuffered: nothing is left to flush on close);
    the bytes written."""
    written = 0
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                written += f.write(b"\0" * CHUNK) or 0
    return written


def free_bytes(path: Path) -> int:
    return os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
