"""The event types of a meme's life, as the event log records them (one vocabulary for the
pipeline that reports them and the store that appends and projects them).

Personal fields (topic, style, audience, texts, reasons, critique, a failure's message) are
always given apart from the public ones: the log seals them with the meme's own key
(:mod:`memesys.storage.sealing`)."""

from __future__ import annotations

from collections.abc import Mapping
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
# running, succeeded, failed; data: status, stage, progress, meme_id, expires_at; personal:
# the record, its request with it), then ``task_scrubbed`` when its meme is erased (data: the
# record without its request). The task's record is their projection.
TASK = "task_"
TASK_SCRUBBED = "task_scrubbed"

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
