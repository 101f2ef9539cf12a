"""The generator workers: one meme from topic to stored PNG, many memes in flight per process.

Each worker is an async actor; a meme is one coroutine. Its stages are the pipeline of
:mod:`memesys.pipeline.stages`, placed by ``pipeline.mode``:

- ``parallel``: select, write and refine run here (in threads: DSPy is synchronous); the three
  verifiers and the scorer of a draft go to the verifier pool as one request, run there at
  once, and a verifier whose call fails (or the whole request, missing its deadline) is an
  "unavailable" verdict;
- ``sequential``: the reference path, every stage one after another in one thread here.

The render pool draws the PNG (in ``parallel`` mode while the first caption is judged) and the
store pool saves meme and PNG (and the cache entry). The flow itself, shared with the
in-process engine, is :class:`memesys.pipeline.making.MemeMaker`; this module places its steps
in the tree (:class:`TreeWorkshop`).

Every stage is a predictor of the worker's MemeProgram (``pipeline.program_path``, loaded when
the worker starts; the verifier workers load the same file); its hash is part of the cache key
and of the meme's ``provider.program``.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from actors.bridge import RemoteFailure
from actors.messages import Failure
from memesys.config import LLMConfig, PipelineConfig
from memesys.domain.engines import ACTORS
from memesys.domain.messages import (
    CachedMeme,
    GenerateMeme,
    JudgeDraft,
    Judgement,
    Judgements,
    RenderMeme,
    SaveMeme,
    StoreHealth,
)
from memesys.pipeline.draft import Draft
from memesys.pipeline.making import MemeFailed, MemeMaker
from memesys.pipeline.program import load_configured
from memesys.pipeline.refinement import RefinePolicy
from memesys.pipeline.scoring import Scores
from memesys.pipeline.stages import BlockingStages, stage_handles
from memesys.pipeline.verification import VERIFIERS, Verdict
from memesys.tree.llmcalls import under_deadline
from memesys.tree.paths import RENDER, STORE, VERIFY

T = TypeVar("T")


@dataclass(frozen=True)
class GeneratorArgs:
    llm: LLMConfig
    pipeline: PipelineConfig
    max_in_flight: int = 64
    stage_timeout_s: float = 10.0  # render and store
    redis_url: str = ""  # the LLM client layer's shared state (breakers, limits)
    key_prefix: str = "memesys"
    llm_processes: int = 1  # processes sharing the LLM limits (generators + verifiers)


@dataclass
class PoolStages(BlockingStages):
    """Pipeline stages for ``parallel`` mode: select, write and refine in this worker's
    threads, judging on the verifier pool. The program select, write and refine run here;
    its hash goes with each judging request, and a verifier worker that runs another program
    refuses it (never a silent mix)."""

    worker: GeneratorWorker
    deadline_s: float
    program_hash: str

    async def judge_all(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict],
                                                                   Scores | BaseException]:
        """One JudgeDraft to the verifier pool: a stage that failed, or all of them if the
        ask did, is an unavailable verdict (a failed scorer, its RequestFailed)."""
        try:
            judged: Judgements = await self.worker.ask(
                VERIFY, JudgeDraft(draft, self.program_hash), self.deadline_s, idempotent=True)
            answers, lost = dict(judged.answers), None
        except RemoteFailure as exc:
            answers, lost = {}, exc.failure
        verdicts = {}
        for verifier in VERIFIERS:
            answer = answers.get(verifier, lost)
            if isinstance(answer, Judgement):
                verdicts[verifier] = answer.result
                self.ledger.record(verifier + suffix, answer.run)
            else:
                verdicts[verifier] = Verdict.unavailable(verifier, _why(answer))
        scored = answers.get("score", lost)
        if isinstance(scored, Judgement):
            self.ledger.record("score" + suffix, scored.run)
            return verdicts, scored.result
        return verdicts, RequestFailed(scored.code, f"the scorer failed: {_why(scored)}",
                                       scored.retry_after)


def _why(failure: Failure) -> str:
    return f"{failure.code}: {failure.message}"


class GeneratorWorker(AsyncActor):
    def on_start(self, args: GeneratorArgs) -> None:
        self.args = args
        self.max_in_flight = args.max_in_flight
        handle_for = stage_handles(args.llm, args.pipeline.stage_timeout_s, args.redis_url,
                                   args.key_prefix, args.llm_processes)
        # the program is checked by the daemon before start-up
        self.maker = MemeMaker(load_configured(args.pipeline), handle_for,
                               RefinePolicy.from_config(args.pipeline), args.pipeline.mode,
                               ACTORS)

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, GenerateMeme):
            return self.generate(payload)
        return super().handle(payload)

    async def generate(self, request: GenerateMeme) -> dict:
        try:
            return await self.maker.make(request, TreeWorkshop(self))
        except MemeFailed as exc:
            raise RequestFailed(exc.code, exc.message, exc.retry_after) from exc


@dataclass
class TreeWorkshop:
    """A meme's steps placed in the tree: the store and render pools, judging on the verifier
    pool (``parallel``) or every stage here in one thread (``sequential``)."""

    worker: GeneratorWorker

    async def _ask(self, path: str, payload: Any) -> Any:
        try:
            return await self.worker.ask(path, payload, self.worker.args.stage_timeout_s)
        except RemoteFailure as exc:
            raise RequestFailed(exc.failure.code, f"{path}: {exc.failure.message}",
                                getattr(exc.failure, "retry_after", None)) from exc

    async def cached(self, key: str) -> dict | None:
        return await self._ask(STORE, CachedMeme(key))

    async def store_up(self) -> bool:
        return bool(await self._ask(STORE, StoreHealth()))

    async def render(self, order: RenderMeme) -> bytes:
        return await self._ask(RENDER, order)

    async def save(self, order: SaveMeme) -> str:
        return await self._ask(STORE, order)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(under_deadline, fn, *args)

    def stages(self, maker: MemeMaker) -> PoolStages:
        # A verifier call may queue behind others in the pool: give it the stage bound plus a
        # margin before calling it unavailable.
        return PoolStages(self.blocking, maker.handle_for, maker.program.program,
                          worker=self.worker,
                          deadline_s=self.worker.args.pipeline.stage_timeout_s + 1.0,
                          program_hash=maker.program.hash)
