"""Actors used by the runtime's tests. They record lifecycle events in a shared file so a test
can check order across processes."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from actors.async_actor import AsyncActor
from actors.base import BaseActor
from actors.messages import Batch, Stop
from actors.supervisor import Supervisor


@dataclass(frozen=True)
class Journal:
    path: str
    stop_delay_s: float = 0.0  # >0: ignore Stop for this long (tests shutdown timeouts)
    fail_start: bool = False
    hang_restart_s: float = 0.0  # >0: its first restart blocks in on_start this long (a hang)


def record(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _starts(path: str, name: str) -> int:
    """How many times ``name`` has started, or begun to (a hang)."""
    try:
        with open(path) as f:
            return sum(line.startswith((f"start {name} ", f"hang {name} ")) for line in f)
    except FileNotFoundError:
        return 0


class Recorder(BaseActor):
    """Counts requests; ``"crash"`` raises, ``"stop"`` exits normally via StopMe,
    ``("sleep", s)`` blocks its mailbox for ``s`` seconds (a late reply)."""

    def on_start(self, args: Journal) -> None:
        self.journal = args
        self.count = 0
        if args.fail_start:
            record(args.path, f"fail {self.name} {os.getpid()}")
            raise RuntimeError("configured to fail")
        if args.hang_restart_s and _starts(args.path, self.name) == 1:
            record(args.path, f"hang {self.name} {os.getpid()}")
            time.sleep(args.hang_restart_s)
        record(args.path, f"start {self.name} {os.getpid()}")

    def on_stop(self) -> None:
        record(self.journal.path, f"stop {self.name}")

    def handle(self, payload: Any) -> Any:
        if payload == "crash":
            raise RuntimeError("asked to crash")
        if payload == "effect-then-crash":  # a side effect Thespian's retry would repeat
            record(self.journal.path, f"effect {self.name} {os.getpid()}")
            raise RuntimeError("asked to crash after a side effect")
        if payload == "stop":
            self.request_stop()
            return "stopping"
        if isinstance(payload, tuple) and payload[0] == "sleep":
            time.sleep(payload[1])
            return "slept"
        if payload == "pid":
            return os.getpid()
        self.count += 1
        return self.count

    def stop_gracefully(self, msg: Stop, sender: Any) -> None:
        if self.journal.stop_delay_s:
            time.sleep(self.journal.stop_delay_s)
        super().stop_gracefully(msg, sender)


class Echo(BaseActor):
    def handle(self, payload: Any) -> Any:
        return payload


class Tally(BaseActor):
    """Echoes; ``"tally"`` answers ``(requests, batched)``: how many requests it answered and
    how many of them came in a batch."""

    requests = batched = 0

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Batch):
            self.batched += len(msg.messages)
        super().receiveMessage(msg, sender)

    def handle(self, payload: Any) -> Any:
        if payload == "tally":
            return self.requests, self.batched
        self.requests += 1
        return payload


class Sleeper(AsyncActor):
    """Sleeps ``payload`` seconds without blocking its mailbox; answers its pid."""

    def on_start(self, args: Any) -> None:
        self.max_in_flight = args or 64

    async def _sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    def handle(self, payload: Any) -> Any:
        if payload == "boom":

            async def fail() -> None:
                raise ValueError("coroutine failed")

            return fail()
        return self._sleep(float(payload))


class Introspected(Supervisor):
    """A supervisor that also answers ``"pending-status"``: how many status queries to its
    children (by correlation id) and of its own (by query) it still keeps."""

    def handle(self, payload: Any) -> Any:
        if payload == "pending-status":
            return len(self._status.by_query), len(self._status.pending)
        return super().handle(payload)
