"""One meme from topic to stored PNG, the same in both engines.

cache → (store health for a fresh request) → the pipeline → render → save. What differs
between the engines is only *where* each step runs, a :class:`Workshop`: the actor tree's
pools (``memesys.tree.generator``) or this process (``memesys.inprocess``). Keeping the flow
here, once, is what makes the A/B of the two engines a comparison of placements, not of two
programs.

The render is speculative: it starts as soon as the first caption exists and runs while that
caption is judged, so it is off the critical path. The picture is used only if the caption
that ships is the one it drew; a refinement that replaces the caption discards it and the
final caption is drawn (:class:`Speculation`). In ``sequential`` mode (the reference path,
every stage one after another) nothing is speculative.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dspy.utils.exceptions import LMError

from memesys.config import LLMConfig, PipelineConfig
from memesys.domain.events import (
    CAPTION_WRITTEN,
    FAILED,
    FORMAT_CHOSEN,
    REFINED,
    RENDERED,
    REQUESTED,
    SCORED,
    VERDICT,
    Journal,
)
from memesys.domain.formats import UnknownFormat, get_format
from memesys.domain.ids import new_id
from memesys.domain.messages import GenerateMeme, RenderMeme
from memesys.errors import ErrorCode, MemesysError
from memesys.llm import reservations
from memesys.llm.transport import current_deadline
from memesys.pipeline import admission
from memesys.pipeline.decision import Refused
from memesys.pipeline.errors import MemeFailed, lm_failed
from memesys.pipeline.flow import SCOPE, PipelineResult, run_pipeline
from memesys.pipeline.lm import LMHandle, stage_handles
from memesys.pipeline.placements import LocalStages, ParallelStages
from memesys.pipeline.predict import OutputError
from memesys.pipeline.program import LoadedProgram, load_configured
from memesys.pipeline.record import build_meme, cache_key
from memesys.pipeline.refinement import RefinePolicy
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import Verdict
from memesys.pipeline.writing import Caption
from memesys.telemetry import logs, tracing

SEQUENTIAL = "sequential"
log = logging.getLogger("memesys.pipeline")


@dataclass(frozen=True)
class SaveMeme:
    """A finished meme and its PNG, to be saved together (with its cache entry unless None)
    as its ``completed`` event."""

    meme: dict[str, Any]
    png: bytes = field(repr=False)  # ~100 KB: never in a log line or a traceback
    cache_key: str | None = None
    version: int = 0  # the meme's events its journal appended: its ``completed`` comes next
    correlation: str = ""  # the request's or task's id its events carry
    events: tuple[Any, ...] = ()  # recorded, not appended yet: they go before ``completed``
    staged: str = ""  # what Workshop.stage_image returned for its picture, if it was staged


class Workshop(Protocol):
    """Where one engine runs the steps of a meme. Each raises its failure with a contract code
    (the actor tree: ``RequestFailed``; this process: :class:`MemeFailed`)."""

    async def cached(self, key: str) -> dict[str, Any] | None: ...

    async def store_answers(self) -> bool: ...

    def stages(self, maker: MemeMaker) -> ParallelStages:
        """Where ``maker``'s stages run in ``parallel`` mode."""
        ...

    async def render(self, order: RenderMeme) -> bytes: ...

    async def stage_image(self, meme_id: str, png: bytes) -> str:
        """Put the PNG of a meme still being made in place ahead of its save; returns what
        ``SaveMeme.staged`` and :meth:`unstage` take (``MemeStore.stage_image``; its
        ``StoreError`` as it is, the save answers for the store)."""
        ...

    async def unstage(self, staged: str) -> None:
        """Remove a staged picture whose meme will not be saved."""
        ...

    async def save(self, order: SaveMeme) -> str: ...

    def journal(self, meme_id: str, request: GenerateMeme) -> Journal:
        """Where the meme's progress events go, in order (the event log)."""
        ...


def render_order(caption: Caption, seed: int) -> RenderMeme:
    fmt = get_format(caption.format)
    return RenderMeme(fmt.name, fmt.layout, caption.texts, f"{fmt.name}:{seed}")


class Speculation:
    """The picture of the first caption, drawn while the caption is judged, and its files put
    in place (``stage``: :meth:`Workshop.stage_image`) before the judging ends, so that the
    save after it only records events.

    It starts ``delay_s`` after the caption, or as soon as the picture is wanted if that is
    sooner: the judging group's four calls are prepared and sent in the first milliseconds,
    and a render at that moment (several ms of CPU) delays them on a small machine
    (docs/perf/2026-12-01-bench-ab.md). The delay costs only a meme whose judging ends within
    ``delay_s`` plus a render's time (a fast model), and at most one render's time.

    A picture that could not be staged (the store failing) is written by the save, which then
    answers for the store. Staged files nobody will use (the meme failed, or kept another
    caption) are removed (``unstage``) once their staging is over, even if it was still
    running when they were dropped; what a failure there leaves, ``MemeStore.tidy_images``
    removes later."""

    def __init__(
        self,
        render: Callable[[RenderMeme], Awaitable[bytes]],
        seed: int,
        delay_s: float = 0.0,
        stage: Callable[[bytes], Awaitable[str]] | None = None,
        unstage: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.render, self.seed, self.delay_s = render, seed, delay_s
        self.stage, self.unstage = stage, unstage
        self.order: RenderMeme | None = None
        self.task: asyncio.Future[tuple[bytes, str]] | None = None
        self.staging: asyncio.Future[str] | None = None  # not handed to a save yet
        self.wanted = asyncio.Event()

    def start(self, caption: Caption) -> None:
        self.order = render_order(caption, self.seed)
        self.task = asyncio.ensure_future(self._draw(self.order))

    async def _draw(self, order: RenderMeme) -> tuple[bytes, str]:
        if self.delay_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay_s):
                    await self.wanted.wait()
        png = await self._render(order, True)
        if self.stage is None:
            return png, ""
        self.staging = asyncio.ensure_future(self.stage(png))
        try:  # shielded: dropped now, the staging still ends, to be undone
            return png, await asyncio.shield(self.staging)
        except MemesysError as exc:
            log.debug("the picture was not staged (the save writes it): %s", exc)
            return png, ""

    async def _render(self, order: RenderMeme, speculative: bool) -> bytes:
        with tracing.span("stage render", {"memesys.speculative": speculative}, SCOPE):
            return await self.render(order)

    async def picture_for(self, caption: Caption) -> tuple[bytes, str]:
        """The PNG of ``caption`` and what staged it (``""``: not staged, the save writes it):
        the speculative one only if it drew exactly this caption. The staged files are the
        save's from then on."""
        order = render_order(caption, self.seed)
        if self.task is not None and order == self.order:
            self.wanted.set()
            drawn = await self.task
            self.staging = None
            return drawn
        staging, self.staging = self.staging, None
        self.discard()
        if staging is not None:  # undone before the meme's name is given another picture
            await self._undone(staging)
        return await self._render(order, False), ""

    async def _undone(self, staging: asyncio.Future[str]) -> None:
        staged = ""
        try:
            with contextlib.suppress(MemesysError):
                staged = await asyncio.shield(staging)
        except asyncio.CancelledError:
            staging.add_done_callback(self._undo)
            raise
        if staged and self.unstage is not None:
            await self.unstage(staged)

    def discard(self) -> None:
        """Drop a picture nobody will use (its failure, if any, is nobody's either), and its
        staged files."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            self.task.add_done_callback(_swallow)
        self.task = None
        staging, self.staging = self.staging, None
        if staging is not None:
            staging.add_done_callback(self._undo)

    def _undo(self, staging: asyncio.Future[str]) -> None:
        if staging.cancelled() or staging.exception() is not None or self.unstage is None:
            return
        asyncio.ensure_future(self.unstage(staging.result())).add_done_callback(_swallow)


@dataclass(frozen=True)
class Progress:
    """The pipeline's observer for one meme: each step as an event in its journal, and the
    first caption's picture started (``speculation``; None in ``sequential`` mode)."""

    journal: Journal
    speculation: Speculation | None

    def drafted(self, caption: Caption) -> None:
        # the reason may quote the topic: personal
        self.journal.record(FORMAT_CHOSEN, {"format": caption.format}, {"reason": caption.reason})
        self.journal.record(
            CAPTION_WRITTEN,
            {"format": caption.format, "slots": len(caption.texts)},
            {"texts": list(caption.texts)},
        )
        if self.speculation is not None:
            self.speculation.start(caption)

    def judged(self, round: int, verdicts: Mapping[str, Verdict], scores: Scores | None) -> None:
        for name, verdict in verdicts.items():
            self.journal.record(
                VERDICT,
                {
                    "round": round,
                    "verifier": name,
                    "status": verdict.status,
                    "confidence": _round(verdict.confidence),
                },
                {"reasons": list(verdict.reasons)},
            )
        if scores is not None:
            numbers = {
                "round": round,
                **{
                    name: _round(getattr(scores, name))
                    for name in ("humor", "clarity", "creativity", "shareability", "overall")
                },
            }
            self.journal.record(SCORED, numbers, {"critique": scores.critique})

    def rewritten(self, round: int, caption: Caption) -> None:
        self.journal.record(REFINED, {"round": round}, {"texts": list(caption.texts)})


def _round(score: float) -> float:
    """A score or confidence as an event records it: 4 decimals (0.6729999999999999 costs the
    log 18 bytes)."""
    return round(score, 4)


def _failure_code(exc: BaseException) -> str:
    """The contract code a failed meme's event records."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"  # its request's deadline, or the client went away
    code = getattr(exc, "code", None)
    return str(getattr(code, "value", code) or ErrorCode.INTERNAL.value)


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class MemeMaker:
    """The flow of one meme for an engine (``engine`` is what the meme records as its maker;
    ``render_delay_s``: ``pipeline.render_delay_s``, see :class:`Speculation`; ``fuse``:
    select and write in one call, ``pipeline.fuses_select_write``; ``backlog_s`` and
    ``task_backlog_s``: how far ahead a person's meme's first call and a task's may be booked
    on the provider's schedule (a task's on its background lane), ``[llm] max_backlog_s`` and
    ``task_backlog_s``, :mod:`memesys.pipeline.admission`)."""

    program: LoadedProgram
    handle_for: Callable[[str], LMHandle]
    policy: RefinePolicy
    mode: str
    engine: str
    render_delay_s: float
    fuse: bool
    backlog_s: float
    task_backlog_s: float

    @classmethod
    def configured(
        cls,
        engine: str,
        llm: LLMConfig,
        pipeline: PipelineConfig,
        redis_url: str,
        key_prefix: str,
        llm_processes: int,
    ) -> MemeMaker:
        """The maker of ``engine`` as the [llm] and [pipeline] sections describe it: the one
        wiring of both engines. The program is ``pipeline.program_path``'s (checked by the
        daemon before start-up); the LLM client layer's shared state (breakers, limits) is on
        ``redis_url`` under ``key_prefix``, shared by ``llm_processes`` processes."""
        return cls(
            load_configured(pipeline),
            stage_handles(llm, pipeline.stage_timeout_s, redis_url, key_prefix, llm_processes),
            RefinePolicy.from_config(pipeline),
            pipeline.mode,
            engine,
            pipeline.render_delay_s,
            pipeline.fuses_select_write,
            llm.max_backlog_s,
            llm.task_backlog_s,
        )

    def key(self, request: GenerateMeme) -> str:
        return cache_key(request, self.handle_for("write"), self.program.hash)

    async def make(self, request: GenerateMeme, workshop: Workshop) -> dict[str, Any]:
        """The meme of ``request``; every line logged meanwhile carries its trace id (and,
        for a task's meme, the task's id; once it has one, the meme's)."""
        with logs.bind(
            trace_id=request.trace_id, task_id=request.correlation if request.background else ""
        ):
            return await self._make(request, workshop)

    async def _make(self, request: GenerateMeme, workshop: Workshop) -> dict[str, Any]:
        timings: dict[str, float] = {}
        began = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        key = self.key(request)
        # Fail fast while the store is down, before any LLM call: a meme that cannot be saved
        # cannot be served by id or image_url, and its tokens would be spent for nothing. The
        # cache lookup fails with store_error then; a fresh request asks the store's health.
        # (Unless the asker did it just now: request.looked_up.)
        if request.looked_up:
            pass
        elif not request.fresh:
            with tracing.span("stage cache", None, SCOPE) as span:
                cached = await workshop.cached(key)
                if span is not None:
                    span.set_attribute("memesys.cache.hit", cached is not None)
            lap("cache")
            if cached is not None:
                log.debug("meme %s served from the cache", cached.get("id"))
                return {**cached, "cached": True, "trace_id": request.trace_id}
        elif not await workshop.store_answers():
            raise MemeFailed(ErrorCode.STORE_ERROR, "the store is down; no meme was made")
        # The provider's budget: the first draft's calls booked, or refused before any is made.
        booked = admission.book(
            self.handle_for,
            admission.first_calls(self.fuse, bool(request.format)),
            current_deadline(),
            self.task_backlog_s if request.background else self.backlog_s,
            request.background,
        )
        meme_id = request.meme_id or new_id()
        with logs.bind(meme_id=meme_id):
            log.debug("making meme %s (%s, %s engine)", meme_id, self.mode, self.engine)
            journal = workshop.journal(meme_id, request)
            journal.record(
                REQUESTED,
                {
                    "format": request.format,
                    "seed": request.seed,
                    "fresh": request.fresh,
                    "background": request.background,
                    "engine": self.engine,
                    "mode": self.mode,
                },
                {"topic": request.topic, "style": request.style, "audience": request.audience},
                now=False,  # with the caption, in one append
            )
            speculation = Speculation(
                workshop.render,
                request.seed,
                self.render_delay_s,
                functools.partial(workshop.stage_image, meme_id),
                workshop.unstage,
            )
            progress = Progress(journal, None if self.mode == SEQUENTIAL else speculation)
            try:
                with reservations.holding(booked):
                    result, judge_ms = await self._pipeline(request, workshop, progress)
                lap("pipeline")
                png, staged = await speculation.picture_for(result.caption)
                lap("render")
                journal.record(RENDERED, {"bytes": len(png)}, now=False)  # with completed
            except BaseException as exc:
                journal.record(FAILED, {"code": _failure_code(exc)}, {"message": str(exc)})
                log.info("meme %s not made: %s", meme_id, _failure_code(exc))
                raise
            finally:
                speculation.discard()
            try:  # from here the staged picture is the save's
                timings.update(result.timings, **judge_ms)
                timings["pipeline_total"] = timings.pop("total")
                fmt = get_format(result.caption.format)
                meme = build_meme(
                    meme_id,
                    request,
                    fmt,
                    result,
                    png,
                    self.mode,
                    timings,
                    self.program.provider,
                    self.engine,
                )
                version, events = await journal.settled()
                correlation = request.correlation or request.trace_id
                with tracing.span("stage save", None, SCOPE):
                    await workshop.save(
                        SaveMeme(
                            meme,
                            png,
                            None if request.fresh else key,
                            version,
                            correlation,
                            events,
                            staged,
                        )
                    )
            except Exception:
                # Not when cancelled: a save already in its thread may still land, and would
                # then lack its picture; MemeStore.tidy_images settles those files later.
                if staged:
                    asyncio.ensure_future(workshop.unstage(staged)).add_done_callback(_swallow)
                raise
            lap("store")
            timings["total"] = (time.perf_counter() - began) * 1000
            log.info("meme %s made in %.0f ms", meme_id, timings["total"])
            return {**meme, "timings": {stage: round(ms, 2) for stage, ms in timings.items()}}

    async def _pipeline(
        self, request: GenerateMeme, workshop: Workshop, progress: Progress
    ) -> tuple[PipelineResult, dict[str, float]]:
        """The stages of one meme and the judging group's timings; ``progress`` hears of each
        step as it ends."""
        fields = (
            request.topic,
            request.format,
            request.style,
            request.audience,
            request.seed,
            self.policy,
        )
        try:
            if self.mode == SEQUENTIAL:
                local = LocalStages(self.handle_for, program=self.program.program)
                return await run_pipeline(local, *fields, observer=progress), {}
            stages = workshop.stages(self)
            result = await run_pipeline(stages, *fields, observer=progress, fuse=self.fuse)
            return result, stages.judge_ms
        except Refused as exc:
            raise MemeFailed(exc.code, str(exc)) from exc
        except UnknownFormat as exc:
            raise MemeFailed(ErrorCode.INVALID_FIELD, f"format: {exc.args[0]}") from exc
        except OutputError as exc:
            raise MemeFailed(exc.code, f"the model's output is unusable: {exc}") from exc
        except LMError as exc:
            raise lm_failed(exc) from exc
