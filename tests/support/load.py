"""Clients in threads posting memes to a real daemon back to back, every answer kept: the load
under which the fault tests kill, freeze and starve parts of the daemon."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.daemon import DaemonProcess

JOIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    """One HTTP answer to ``client``; times from ``time.monotonic()``; ``code`` is the error
    code ("" on success), ``body`` the body as :func:`parsed`."""

    client: int
    sent: float
    done: float
    status: int
    code: str
    retry_after: str
    topic: str
    body: dict | None

    @property
    def took(self) -> float:
        return self.done - self.sent


def parsed(raw: bytes) -> dict | None:
    """A JSON body; anything else kept as ``{"raw": text}`` for the test to show."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace")}


def unique_topic(label: str, client: int, n: int) -> tuple[str, bool]:
    """The default order: a topic of the client's own, every meme fresh."""
    return f"{label} client {client} meme {n}", True


class Load:
    """``clients`` threads posting ``POST /v1/memes`` back to back, plus ``submitters`` threads
    posting ``?async=true`` every ``submit_every_s``; ``order(label, client, n)`` gives each
    request's (topic, fresh); submitted topics are all different. ``read_back``: each meme
    made is read back (``GET /v1/memes/{id}``) into ``reads``. After a failed answer a client pauses
    ``pause_after_failure_s`` (a light back-off that keeps the load on). A client whose
    connection fails (the daemon has exited) stops and counts it in ``connection_errors``."""

    def __init__(
        self,
        daemon: DaemonProcess,
        label: str = "load",
        clients: int = 3,
        *,
        order: Callable[[str, int, int], tuple[str, bool]] = unique_topic,
        read_back: bool = False,
        pause_after_failure_s: float = 0.0,
        submitters: int = 0,
        submit_every_s: float = 0.1,
        timeout: float = 30.0,
    ) -> None:
        self.daemon, self.label, self.order = daemon, label, order
        self.read_back, self.pause_after_failure_s = read_back, pause_after_failure_s
        self.submit_every_s, self.timeout = submit_every_s, timeout
        self.submitters = submitters
        self.stop = threading.Event()
        self.answers: list[Answer] = []  # every synchronous POST
        self.reads: list[Answer] = []  # every read-back GET
        self.submitted: list[Answer] = []  # every asynchronous POST
        self.connection_errors = 0  # clients stopped by a failed connection
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ] + [
            threading.Thread(target=self._submitter, args=(i,), daemon=True)
            for i in range(submitters)
        ]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 201]

    def accepted(self) -> list[Answer]:
        return [a for a in self.submitted if a.status == 202]

    def refused(self) -> list[Answer]:
        return [a for a in self.submitted if a.status != 202]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S  # for all of them: a client may hang
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def answered_since(self, moment: float) -> bool:
        """Every client has had an answer since ``moment``: what was in flight then is done."""
        clients = {a.client for a in self.answers if a.done > moment}
        return len(clients) + self.connection_errors >= len(self.threads) - self.submitters

    def hung(self) -> bool:
        """A client still waiting for an answer after the load stopped."""
        return any(t.is_alive() for t in self.threads)

    def _ask(
        self, client: int, method: str, path: str, topic: str = "", fresh: bool = False
    ) -> Answer:
        sent = time.monotonic()
        body = {"topic": topic, "fresh": fresh} if method == "POST" else None
        status, headers, raw = self.daemon.request(method, path, body, timeout=self.timeout)
        payload = parsed(raw)
        code = (payload or {}).get("error", {}).get("code", "") if status >= 400 else ""
        retry_after = headers.get("Retry-After", "")
        return Answer(client, sent, time.monotonic(), status, code, retry_after, topic, payload)

    def _client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            topic, fresh = self.order(self.label, i, n)
            try:
                answer = self._ask(i, "POST", "/v1/memes", topic, fresh)
                self.answers.append(answer)
                if answer.status == 201 and self.read_back and answer.body:
                    self.reads.append(self._ask(i, "GET", f"/v1/memes/{answer.body['id']}"))
            except OSError:  # the daemon has exited: nothing listens any more
                self.connection_errors += 1
                return
            if answer.status != 201 and self.pause_after_failure_s:
                time.sleep(self.pause_after_failure_s)  # the client's own back-off

    def _submitter(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            topic, _ = unique_topic(f"{self.label} task", i, n)
            self.submitted.append(self._ask(i, "POST", "/v1/memes?async=true", topic))
            time.sleep(self.submit_every_s)  # the submitter's pace
