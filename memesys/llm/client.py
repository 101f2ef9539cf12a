"""One pooled HTTP client per process and endpoint: keep-alive connections, a bounded number
of them, and no retries or redirects of its own (the transport's retry layer is the only one).

It is urllib3's connection pool, not httpx: a call on the fake provider cost 0.6 ms of CPU
in httpx (URL parsing, header models, h11) against 0.3 ms in urllib3, and six calls make a
meme (docs/perf/2026-12-01-llm-and-messages-cpu.md). The transport needs nothing httpx has and
urllib3 lacks: one POST of a JSON body, a bounded wait for a free connection, a timeout.

urllib3 logs every request at DEBUG; its lines are kept to warnings (the transport logs and
counts what matters: failed attempts, breaker transitions, fallbacks; metrics for every
call)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

logging.getLogger("urllib3").setLevel(logging.WARNING)

# An answer larger than this is not a chat completion this daemon asked for: the attempt fails
# (malformed) instead of reading it all into memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """The provider's answer, read in full."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes


class AnswerTooLarge(Exception):
    """The provider's answer was larger than any completion this daemon asks for."""


class Endpoint:
    """POSTs to one base URL through a pool of at most ``max_connections`` keep-alive
    connections; a caller finding none free waits for one, and that wait counts against the
    attempt's timeout."""

    def __init__(self, base_url: str, max_connections: int) -> None:
        parts = urlsplit(base_url)
        self.base_path = parts.path.rstrip("/")
        pool_kind = (
            urllib3.HTTPSConnectionPool if parts.scheme == "https" else urllib3.HTTPConnectionPool
        )
        if parts.hostname is None:  # as urllib3 would refuse it
            raise urllib3.exceptions.LocationValueError("No host specified.")
        self.pool = pool_kind(
            parts.hostname, parts.port, maxsize=max_connections, block=True, retries=False
        )

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
        """The answer (``AnswerTooLarge`` past MAX_ANSWER_BYTES), or urllib3's exception: a
        timeout (``TimeoutError``), no free connection in time (``EmptyPoolError``), anything
        else on the way (``HTTPError``)."""
        answer = self.pool.urlopen(
            "POST",
            self.base_path + path,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(total=timeout_s),
            retries=False,
            redirect=False,
            # urllib3 types it int; it is a queue's timeout and takes a float
            pool_timeout=timeout_s,  # type: ignore[arg-type]
            preload_content=False,
        )
        try:
            data = answer.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                answer.close()  # the rest is never read: the connection cannot be reused
                raise AnswerTooLarge(f"the answer is over {MAX_ANSWER_BYTES} bytes")
        finally:
            answer.release_conn()
        return Answer(answer.status, answer.headers, data)


_clients: dict[tuple[str, int], Endpoint] = {}
_lock = threading.Lock()


def http_client(base_url: str, max_connections: int) -> Endpoint:
    """The process's client for ``base_url`` (made on first use, shared by every model and
    stage)."""
    key = (base_url.rstrip("/"), max_connections)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Endpoint(key[0], max_connections)
        return client
