"""The event types of a meme's life, as the event log records them (one vocabulary for the
pipeline that reports them and the store that appends and projects them).

Personal fields (topic, style, audience, texts, reasons, critique, a failure's message) are
always given apart from the public ones: the log seals them with the meme's own key
(:mod:`memesys.storage.sealing`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

# data: format, seed, fresh, background, engine, mode; personal: topic, style, audience
REQUESTED = "requested"
FORMAT_CHOSEN = "format_chosen"  # data: format; personal: reason (it may quote the topic)
CAPTION_WRITTEN = "caption_written"  # data: format, slots; personal: texts
VERDICT = "verdict"  # data: round, verifier, status, confidence; personal: reasons
SCORED = "scored"  # data: round, the four scores, overall; personal: critique
REFINED = "refined"  # data: round; personal: texts
RENDERED = "rendered"  # data: bytes
COMPLETED = "completed"  # data: id, created_at, format; personal: record (the served meme)
FAILED = "failed"  # data: code; personal: message
CACHED = "cached"  # data: meme, cache (the entry key's digest), expires_at
ERASED = "erased"  # data: id, caches (the digests of the entries it dropped)
EXPIRED = "expired"  # data: id, caches (retention: as erased)

# A task's stream (``task:<id>``): one event per status it takes, ``task_<status>`` (queued,
# running, succeeded, failed, cancelled; data: status, stage, progress, meme_id, making (the
# meme a running task is making, whose stream holds its progress), expires_at; personal: the
# record, its request with it), then ``task_scrubbed`` when its meme is erased (data: the
# record without its request). The task's record is their projection.
TASK = "task_"
TASK_QUEUED = "task_queued"
TASK_RUNNING = "task_running"
TASK_SUCCEEDED = "task_succeeded"
TASK_FAILED = "task_failed"
TASK_CANCELLED = "task_cancelled"
TASK_SCRUBBED = "task_scrubbed"

# A running task's stage is the last progress event of the meme it is making ("started"
# before the first), and its progress the furthest those events reached: a refinement's
# second round of verdicts does not take it back.
STARTED = "started"
STAGE_PROGRESS = {
    STARTED: 0.05,
    FORMAT_CHOSEN: 0.15,
    CAPTION_WRITTEN: 0.3,
    VERDICT: 0.45,
    SCORED: 0.6,
    REFINED: 0.7,
    RENDERED: 0.9,
}


def task_stage(types: Iterable[str]) -> tuple[str, float]:
    """The stage and progress of a running task whose meme's events are of ``types`` (in
    order); the events that are no stage (``requested``, ``failed``) leave them as they were."""
    stage, progress = STARTED, STAGE_PROGRESS[STARTED]
    for type in types:
        if type in STAGE_PROGRESS:
            stage, progress = type, max(progress, STAGE_PROGRESS[type])
    return stage, progress


SCHEMA_VERSION = 1


class Journal(Protocol):
    """Where a meme's maker reports its events, in order, as they happen. ``record`` never
    blocks the pipeline; with ``now`` False the event waits for the next one recorded with
    ``now`` (fewer appends: what nobody needs at once goes with what follows). ``settled``
    waits for the appends under way and answers the meme's version (the events appended) and
    the events recorded but not appended yet, which the store appends with the meme's
    ``completed`` event, in the same script."""

    def record(
        self,
        type: str,
        data: Mapping[str, Any],
        personal: Mapping[str, Any] | None = None,
        now: bool = True,
    ) -> None: ...

    async def settled(self) -> tuple[int, tuple[Any, ...]]: ...
