"""The generator workers: one meme from topic to stored PNG, many memes in flight per process.

Each worker is an async actor; a meme is one coroutine. Its stages are the pipeline of
:mod:`memesys.pipeline.flow`, placed by ``pipeline.mode``:

- ``parallel``: select_write (or select and write) and refine run here, awaited on the
  worker's event loop (DSPy's async path: no thread per call); the three verifiers and the
  scorer of a draft go to the verifier pool as one request, run there at once, and a verifier
  whose call fails (or the whole request, missing its deadline) is an "unavailable" verdict;
- ``sequential``: the reference path, every stage one after another here, in the meme's task.

The render pool draws the PNG (in ``parallel`` mode while the first caption is judged). The
worker reads the cache and saves meme and PNG (the PNG as a file of the image directory, then
record and cache entry on Redis) itself, in a thread (redis-py is synchronous), as the
in-process engine does: a hop to the store pool cost a meme about 2 ms and carried the PNG
through one more process. Redis being away is a ``store_error`` answer, not a crash
(:mod:`memesys.storage.availability`), and a meme whose request's deadline passed before its
save is not saved: its asker has already answered the client. The flow itself, shared with the
in-process engine, is :class:`memesys.pipeline.making.MemeMaker`; this module places its steps
in the tree (:class:`TreeWorkshop`).

Every stage is a predictor of the worker's MemeProgram (``pipeline.program_path``, loaded when
the worker starts; the verifier workers load the same file); its hash is part of the cache key
and of the meme's ``provider.program``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from actors import deadlines
from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from actors.bridge import RemoteFailure
from actors.messages import Failure
from memesys.config import LLMConfig, PipelineConfig
from memesys.domain.engines import ACTORS
from memesys.domain.gauges import EVENTLOG_PENDING_AGE, EVENTLOG_PENDING_EVENTS
from memesys.domain.messages import GenerateMeme, RenderMeme
from memesys.errors import ErrorCode
from memesys.llm import reservations
from memesys.llm.errors import LIMITED, call_error
from memesys.pipeline import dspy_patches
from memesys.pipeline.draft import Draft
from memesys.pipeline.errors import MemeFailed
from memesys.pipeline.making import MemeMaker, SaveMeme
from memesys.pipeline.placements import ParallelStages
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import VERIFIERS, Verdict
from memesys.storage.journal import MemeJournal, backlog
from memesys.storage.memes import MemeStore
from memesys.telemetry import tracing
from memesys.tree.judging import JudgeDraft, Judgements, StageJudgement
from memesys.tree.llmcalls import request_failed
from memesys.tree.paths import RENDER, VERIFY
from memesys.tree.store import store_errors_answered

T = TypeVar("T")


@dataclass(frozen=True)
class GeneratorArgs:
    llm: LLMConfig
    pipeline: PipelineConfig
    redis_url: str  # the memes, and the LLM client layer's shared state (breakers, limits)
    image_dir: str  # the PNG files
    key_prefix: str = "memesys"
    max_in_flight: int = 64
    stage_timeout_s: float = 10.0  # render
    llm_processes: int = 1  # processes sharing the LLM limits (generators + verifiers)
    cache_ttl_s: int = 24 * 3600
    quarantine_ttl_s: int = 7 * 24 * 3600
    retry_initial_s: float = 0.05  # Redis down: probe it back with this backoff
    retry_max_s: float = 0.5
    redis_disk: str = ""  # the embedded server's data directory (Config.embedded_redis_dir)


@dataclass
class PoolStages(ParallelStages):
    """Pipeline stages for ``parallel`` mode: select_write (or select and write) and refine
    here, judging on the verifier pool. The program those stages run here;
    its hash goes with each judging request, and a verifier worker that runs another program
    refuses it (never a silent mix)."""

    worker: GeneratorWorker
    deadline_s: float
    program_hash: str

    async def judge_all(
        self, draft: Draft, suffix: str
    ) -> tuple[dict[str, Verdict], Scores | BaseException]:
        """One JudgeDraft to the verifier pool: a stage that failed, or all of them if the
        ask did, is an unavailable verdict (a failed scorer, its RequestFailed)."""
        try:
            judged: Judgements = await self.worker.ask(
                VERIFY,
                JudgeDraft(draft, self.program_hash, reservations.handover()),
                self.deadline_s,
                idempotent=True,
            )
            answers, scored = dict(judged.verdicts), judged.score
        except RemoteFailure as exc:
            answers, scored = dict.fromkeys(VERIFIERS, exc.failure), exc.failure
        verdicts = {}
        for verifier in VERIFIERS:
            answer = answers[verifier]
            if isinstance(answer, StageJudgement):
                verdicts[verifier] = answer.result
                self.ledger.record(verifier + suffix, answer.run)
            else:
                verdicts[verifier] = Verdict.unavailable(verifier, _why(answer))
        if isinstance(scored, StageJudgement):
            self.ledger.record("score" + suffix, scored.run)
            return verdicts, scored.result
        if scored.code == ErrorCode.LLM_RATE_LIMITED:  # the LM's failure, as a local call's is
            return verdicts, call_error(
                ErrorCode.LLM_RATE_LIMITED,
                f"the scorer failed: {_why(scored)}",
                kind=LIMITED,
                model=self.handle_for("score").model,
                retry_after=scored.retry_after,
            )
        return verdicts, RequestFailed.of(scored, f"the scorer failed: {_why(scored)}")


def _why(failure: Failure) -> str:
    return f"{failure.code}: {failure.message}"


# The generator's blocking calls are its store's: a cache look-up, a save (the PNG file and its
# directory fsynced, the events appended in one script): each a few milliseconds on 2 cores, and
# failing fast while Redis is down. One thread per meme in flight (64) grew to 22-35 threads a
# worker at 100 clients (bench.ab's bound is 32 a process) for no more memes: saves beyond 16 at
# once only queue on the disk.
BLOCKING_THREADS = 16


class GeneratorWorker(AsyncActor):
    def on_start(self, args: GeneratorArgs) -> None:
        tracing.start(self.name)
        self.args = args
        self.max_in_flight = args.max_in_flight
        self.blocking_threads = min(args.max_in_flight, BLOCKING_THREADS)
        dspy_patches.apply()
        self.maker = MemeMaker.configured(
            ACTORS, args.llm, args.pipeline, args.redis_url, args.key_prefix, args.llm_processes
        )
        self.store = MemeStore.open(
            args.redis_url,
            f"generator {self.name}",
            args.key_prefix,
            args.image_dir,
            args.quarantine_ttl_s,
            args.retry_initial_s,
            args.retry_max_s,
            args.redis_disk,
        )

    def on_stop(self) -> None:
        try:
            super().on_stop()
        finally:
            self.store.close()
            tracing.stop()

    def gauges(self) -> tuple[tuple[str, float], ...]:
        """The event log's lag in this worker: its journals' events not yet appended."""
        events, oldest_s = backlog()
        return ((EVENTLOG_PENDING_EVENTS, events), (EVENTLOG_PENDING_AGE, oldest_s))

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, GenerateMeme):
            return self.generate(payload)
        return super().handle(payload)

    async def generate(self, request: GenerateMeme) -> dict[str, Any]:
        try:
            return await self.maker.make(request, TreeWorkshop(self))
        except MemeFailed as exc:
            raise request_failed(exc) from exc


def _on_store(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a call on the worker's MemeStore: a Redis failure (or Redis down) is the
    request's ``store_error``."""
    with store_errors_answered():
        return fn(*args)


@dataclass
class TreeWorkshop:
    """A meme's steps placed in the tree: the render pool, judging on the verifier pool
    (``parallel``; every stage here in ``sequential``), Redis in this worker's threads."""

    worker: GeneratorWorker

    async def cached(self, key: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(_on_store, self.worker.store.cached, key)

    async def store_answers(self) -> bool:
        return await asyncio.to_thread(self.worker.store.answers)

    async def render(self, order: RenderMeme) -> bytes:
        try:
            png: bytes = await self.worker.ask(RENDER, order, self.worker.args.stage_timeout_s)
            return png
        except RemoteFailure as exc:
            raise RequestFailed.of(exc.failure, f"{RENDER}: {exc.failure.message}") from exc

    async def stage_image(self, meme_id: str, png: bytes) -> str:
        return await asyncio.to_thread(self.worker.store.stage_image, meme_id, png)

    async def unstage(self, staged: str) -> None:
        await asyncio.to_thread(self.worker.store.unstage, staged)

    async def save(self, order: SaveMeme) -> str:
        # Not after the current deadline (the request's less the reply margin): only a save
        # that itself outlasts that margin can still land after the answer.
        return await asyncio.to_thread(
            _on_store,
            self.worker.store.keep,
            order.meme,
            order.png,
            order.cache_key,
            self.worker.args.cache_ttl_s,
            deadlines.current(),
            order.version,
            order.correlation,
            order.events,
            order.staged,
        )

    def journal(self, meme_id: str, request: GenerateMeme) -> MemeJournal:
        trace = request.trace_id
        return self.worker.store.journal(meme_id, request.correlation or trace, trace)

    def stages(self, maker: MemeMaker) -> PoolStages:
        # A verifier call may queue behind others in the pool: give it the stage bound plus a
        # margin before calling it unavailable.
        return PoolStages(
            maker.handle_for,
            maker.program.program,
            worker=self.worker,
            deadline_s=self.worker.args.pipeline.stage_timeout_s + 1.0,
            program_hash=maker.program.hash,
        )
