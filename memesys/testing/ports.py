"""Loopback ports for the servers that tests and benchmarks start (daemons, actor admins, fakes).

A port from ``bind(("127.0.0.1", 0))`` is in the kernel's ephemeral range, the range every
outgoing connection takes its local port from. A daemon binds its ports a second or two after
they were picked, while its actors and Redis clients open connections: one of those can take
the port first, and the daemon fails with "address already in use" (seen in the suite). These
ports come from below that range, where only a listener can be; a port handed out once is not
handed out again by this process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LOWEST = 10_000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_low() -> int:
    """The first port of the ephemeral range (32768 where the kernel does not say)."""
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A loopback TCP port below the ephemeral range that nothing listens on right now."""
    high = max(_LOWEST + 1_000, _ephemeral_low())
    with _lock:
        for _ in range(1_000):
            port = random.randrange(_LOWEST, high)
            if port in _given:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {_LOWEST}..{high - 1}")
