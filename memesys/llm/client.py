"""One pooled HTTP client per process and endpoint: keep-alive connections, a bounded number
of them, and no retries of its own (the engine's retry layer is the only one).

httpx logs every request at INFO ("HTTP Request: POST ... 200 OK"): six lines a meme, each sent
to Thespian's logger process from an actor. The engine logs and counts what matters (failed
attempts, breaker transitions, fallbacks; metrics for every call), so httpx's own lines are
kept to warnings."""
from __future__ import annotations

import logging
import threading

import httpx

logging.getLogger("httpx").setLevel(logging.WARNING)

_clients: dict[tuple[str, int], httpx.Client] = {}
_lock = threading.Lock()


def http_client(base_url: str, max_connections: int) -> httpx.Client:
    """The process's client for ``base_url`` (made on first use, shared by every model and
    stage): at most ``max_connections`` connections, all kept alive; waiting for a free one
    counts against the call's timeout (httpx's pool timeout)."""
    key = (base_url.rstrip("/"), max_connections)
    with _lock:
        client = _clients.get(key)
        if client is None or client.is_closed:
            limits = httpx.Limits(max_connections=max_connections,
                                  max_keepalive_connections=max_connections,
                                  keepalive_expiry=30.0)
            client = httpx.Client(base_url=key[0], limits=limits,
                                  transport=httpx.HTTPTransport(retries=0, limits=limits),
                                  follow_redirects=False)
            _clients[key] = client
        return client


def close_all() -> None:
    """Close every pooled client (tests; a process that stops)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
