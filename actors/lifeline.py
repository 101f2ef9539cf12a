"""Process lifetimes tied together (Linux): a process dies with its parent, and an actor system
with the process that started it.

Thespian forks every actor from its parent actor, so :func:`die_with_parent`
(``PR_SET_PDEATHSIG``) ties each actor to its parent. The admin is another matter: Thespian
starts it through a double fork (``setsid``, ``fork``, the middle process exits), so its parent
is gone at once and nothing the kernel offers ties it to the process that started the system.
A starter killed outright (SIGKILL, the OOM killer) would strand the admin, its logger and the
whole tree, still holding the admin port. :func:`lifeline` and :func:`on_end` close that gap:
the starter opens a pidfd on itself before the admin is forked, the admin inherits it and
watches it (:mod:`actors.thespian_adapter`).
"""

from __future__ import annotations

import ctypes
import os
import select
import sys
import threading
from collections.abc import Callable

__all__ = ["die_with_parent", "lifeline", "on_end"]

_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")
# Resolved once, before any fork: die_with_parent may run between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if _LINUX else None


def die_with_parent(parent: int, sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent, ``parent`` (the pid that
    forked it), ends; if it ended before the request was made, send it now.

    Strictly it is the parent's forking *thread* whose end sends the signal: fork from a thread
    that lives as long as the parent (an actor's handler runs in its main thread). Safe between
    fork and exec (``preexec_fn``). Elsewhere than Linux, does nothing.
    """
    if _prctl is None:
        return
    if _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:  # the parent ended between fork and prctl
        os.kill(os.getpid(), sig)


def lifeline() -> int | None:
    """A pidfd on this process for its future forks to inherit: it turns readable once this
    process has ended, however it ended. None where the platform has none (not Linux 5.3+)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(os.getpid())
    except OSError:  # an older kernel
        return None


def on_end(pidfd: int, act: Callable[[], None]) -> None:
    """Call ``act`` from a daemon thread once the process of ``pidfd`` has ended.

    The thread only ever waits in ``poll(2)`` and holds no lock meanwhile, so the process may
    still fork (a fork copies only the forking thread, and no lock it could leave held).
    """

    def wait() -> None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
        act()

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
