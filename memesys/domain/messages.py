"""Domain messages: the payloads of :class:`actors.messages.Request` between memesys actors.

Frozen dataclasses, importable by module path; the correlation id lives on the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GenerateMeme:
    """Make one meme. ``fresh`` never serves a cached meme; ``seed`` picks a variant.
    ``looked_up``: the asker has just looked the request up in the cache and found nothing
    (or, for a fresh one, found the store up), so the maker does not do it again.
    ``background``: a task's meme (the runner's), admitted only with what people's memes
    leave of the provider's budget (``[llm] task_backlog_s``). ``correlation``: the task's id
    for a task's meme (its events in the log carry it; else the trace id). ``meme_id``: the id
    to make the meme under (a task's: the ledger names it, so the task's events say where its
    meme's are; "": a new one)."""

    topic: str
    format: str | None = None
    style: str | None = None
    audience: str | None = None
    seed: int = 0
    fresh: bool = False
    trace_id: str = ""
    looked_up: bool = False
    background: bool = False
    correlation: str = ""
    meme_id: str = ""


@dataclass(frozen=True)
class RenderMeme:
    format: str
    layout: str
    texts: tuple[str, ...]
    background_key: str


@dataclass(frozen=True)
class GetMeme:
    meme_id: str


@dataclass(frozen=True)
class GetImage:
    """The meme's PNG, answered with a :class:`MemeImage` (None: no such meme). ``known``: the
    digests the client already holds (its ``If-None-Match``; ``"*"``: any): if the image's is
    one of them, its bytes are not read."""

    meme_id: str
    known: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemeImage:
    """A meme's PNG and its SHA-256 (its ETag); ``png`` is None when the asker already holds
    it (``GetImage.known``)."""

    sha256: str
    png: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ListMemes:
    limit: int = 20
    cursor: str | None = None


@dataclass(frozen=True)
class MemePage:
    memes: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class DeleteMeme:
    meme_id: str


@dataclass(frozen=True)
class StoreHealth:
    """Is the store up? Answered with a ``StoreState``."""


@dataclass(frozen=True)
class StoreState:
    """The store's answer to ``StoreHealth``: whether Redis is up and accepts writes as the
    store sees it (when not, ``reason`` says how: "unreachable", "not answering in time",
    "loading its data", "writes refused: disk full (...)"), the records quarantined so
    far, by kind (``(("meme", 2), ("task", 1))``), and whether the projections are behind the
    event log (lost, the projector catching them up). Truthy when up."""

    up: bool
    reason: str = ""
    quarantined: tuple[tuple[str, int], ...] = ()
    projections_behind: bool = False

    def __bool__(self) -> bool:
        return self.up


@dataclass(frozen=True)
class SubmitTask:
    """Record a generation task durably and run it in the background; answers the task id."""

    order: GenerateMeme


@dataclass(frozen=True)
class GetTask:
    task_id: str


@dataclass(frozen=True)
class CancelTask:
    """To the ledger: cancel a queued or running task; answers its record (status
    ``cancelled``) once its meme's work has stopped, ``not_found`` or ``task_finished``."""

    task_id: str


@dataclass(frozen=True)
class RunTask:
    """From the ledger to the runner: make this meme; the answer is the meme."""

    task_id: str
    order: GenerateMeme


@dataclass(frozen=True)
class RunnerReady:
    """From a (re)started runner to the ledger: send me the open tasks."""
