"""The messages of a task's event stream (``GET /v1/tasks/{id}/events``): what the log's reader
(:mod:`memesys.storage.progress`) finds and the gateway (:mod:`memesys.http.progress`) sends."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ENDS = frozenset({COMPLETED, FAILED, CANCELLED})
"""The task's last message: the stream ends after it."""
EVENT_ID_PATTERN = "[0-9]{1,7}"
"""A message's position as a client sends it back to resume after it (``Last-Event-ID``,
``?last_event_id=``): ASCII digits, at most 7 (far more messages than a task has)."""


@dataclass(frozen=True)
class Shown:
    """One message: its position in the task's stream (1, 2, ...: what ``Last-Event-ID``
    resumes after), its event type and its data (a last message's is filled in by the
    gateway, from the task's record)."""

    n: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def encoded(self) -> bytes:
        data = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.n}\nevent: {self.type}\ndata: {data}\n\n".encode()
