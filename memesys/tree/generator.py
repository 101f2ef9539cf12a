"""The generator workers: one meme from topic to stored PNG, many memes in flight per process.

Each worker is an async actor; a meme is one coroutine. Its stages are the pipeline of
:mod:`memesys.pipeline.stages`, placed by ``pipeline.mode``:

- ``parallel``: select, write and refine run here (in threads: DSPy is synchronous); the three
  verifiers and the scorer go to the verifier pool at once, each with its own deadline, and
  a verifier that fails or misses its deadline is an "unavailable" verdict;
- ``sequential``: the reference path, every stage one after another in one thread here.

Then the render pool draws the PNG and the store pool saves meme and PNG (and the cache entry).

Every stage is a predictor of the worker's MemeProgram (``pipeline.program_path``, loaded when
the worker starts; the verifier workers load the same file); its hash is part of the cache key
and of the meme's ``provider.program``.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from dspy.utils.exceptions import LMError

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from actors.bridge import RemoteFailure
from memesys.config import LLMConfig, PipelineConfig
from memesys.domain.formats import UnknownFormat, get_format
from memesys.domain.ids import new_id
from memesys.domain.messages import (
    CachedMeme,
    GenerateMeme,
    Judgement,
    RenderMeme,
    RunScore,
    RunVerifier,
    SaveMeme,
    StoreHealth,
)
from memesys.errors import ErrorCode
from memesys.pipeline.decision import Refused, decide
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.program import MemeProgram, load_configured
from memesys.pipeline.record import build_meme, cache_key
from memesys.pipeline.refinement import RefinePolicy
from memesys.pipeline.scoring import Scores
from memesys.pipeline.stage import OutputError, first_line
from memesys.pipeline.stages import (
    Ledger,
    PipelineResult,
    run_pipeline,
    run_sequential,
    stage_handles,
)
from memesys.pipeline.verification import VERIFIERS, Verdict
from memesys.tree.llmcalls import lm_failed, under_deadline
from memesys.tree.paths import RENDER, STORE, VERIFY

PARALLEL = "parallel"
SEQUENTIAL = "sequential"
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
class PoolStages:
    """Pipeline stages for ``parallel`` mode: judging fans out to the verifier pool."""

    worker: "GeneratorWorker"
    handle_for: Callable[[str], LMHandle]
    deadline_s: float
    ledger: Ledger = field(default_factory=Ledger)
    judge_ms: dict[str, float] = field(default_factory=dict)
    # The program select, write and refine run here; its hash goes with each judging request,
    # and a verifier worker that runs another program refuses it (never a silent mix).
    program: MemeProgram | None = None
    program_hash: str = ""

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T:
        handle = self.handle_for(stage)
        return await asyncio.to_thread(under_deadline, self.ledger.call, key, handle,
                                       lambda: fn(handle))

    async def judge(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict],
                                                               Scores | None]:
        started = time.perf_counter()
        asks = ([RunVerifier(v, draft, self.program_hash) for v in VERIFIERS]
                + [RunScore(draft, self.program_hash)])
        answers = await asyncio.gather(
            *(self.worker.ask(VERIFY, ask, self.deadline_s, idempotent=True) for ask in asks),
            return_exceptions=True)
        self.judge_ms["judge" + suffix] = (time.perf_counter() - started) * 1000
        verdicts = {}
        for (verifier, answer) in zip(VERIFIERS, answers):
            if isinstance(answer, Judgement):
                verdicts[verifier] = answer.result
                self.ledger.record(verifier + suffix, answer.run)
            else:
                verdicts[verifier] = Verdict.unavailable(verifier, _why(answer))
        scored = answers[-1]
        if isinstance(scored, Judgement):
            self.ledger.record("score" + suffix, scored.run)
            return verdicts, scored.result
        if decide(verdicts).refusal is not None:
            return verdicts, None  # refused anyway; the missing score changes nothing
        failure = scored.failure if isinstance(scored, RemoteFailure) else None
        raise RequestFailed(failure.code if failure else ErrorCode.LLM_UNAVAILABLE,
                            f"the scorer failed: {_why(scored)}",
                            getattr(failure, "retry_after", None))


def _why(answer: BaseException) -> str:
    if isinstance(answer, RemoteFailure):
        return f"{answer.failure.code}: {answer.failure.message}"
    return first_line(answer)


class GeneratorWorker(AsyncActor):
    def on_start(self, args: GeneratorArgs) -> None:
        self.args = args
        self.max_in_flight = args.max_in_flight
        self.mode = args.pipeline.mode
        self.policy = RefinePolicy.from_config(args.pipeline)
        self.handle_for = stage_handles(args.llm, args.pipeline.stage_timeout_s,
                                        args.redis_url, args.key_prefix, args.llm_processes)
        self.program = load_configured(args.pipeline)  # checked by the daemon before start-up

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, GenerateMeme):
            return self.generate(payload)
        return super().handle(payload)

    async def _stage(self, path: str, payload: Any) -> Any:
        try:
            return await self.ask(path, payload, self.args.stage_timeout_s)
        except RemoteFailure as exc:
            raise RequestFailed(exc.failure.code, f"{path}: {exc.failure.message}",
                                getattr(exc.failure, "retry_after", None)) from exc

    async def _pipeline(self, request: GenerateMeme) -> tuple[PipelineResult, dict[str, float]]:
        fields = (request.topic, request.format, request.style, request.audience, request.seed,
                  self.policy)
        try:
            if self.mode == SEQUENTIAL:
                return await asyncio.to_thread(
                    under_deadline, functools.partial(run_sequential, program=self.program.program),
                    self.handle_for, *fields), {}
            # A verifier call may queue behind others in the pool: give it the stage bound
            # plus a margin before calling it unavailable.
            stages = PoolStages(self, self.handle_for,
                                self.args.pipeline.stage_timeout_s + 1.0,
                                program=self.program.program, program_hash=self.program.hash)
            return await run_pipeline(stages, *fields), stages.judge_ms
        except Refused as exc:
            raise RequestFailed(exc.code, str(exc)) from exc
        except UnknownFormat as exc:
            raise RequestFailed(ErrorCode.INVALID_FIELD, f"format: {exc.args[0]}") from exc
        except OutputError as exc:
            raise RequestFailed(exc.code, f"the model's output is unusable: {exc}") from exc
        except LMError as exc:
            raise lm_failed(exc) from exc

    async def generate(self, request: GenerateMeme) -> dict:
        timings: dict[str, float] = {}
        began = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        key = cache_key(request, self.handle_for("write"), self.program.hash)
        # Fail fast while the store is down, before any LLM call: a meme that cannot be saved
        # cannot be served by id or image_url, and its tokens would be spent for nothing. The
        # cache lookup fails with store_error then; a fresh request asks the store's health.
        if not request.fresh:
            cached = await self._stage(STORE, CachedMeme(key))
            lap("cache")
            if cached is not None:
                return {**cached, "cached": True, "trace_id": request.trace_id}
        elif not await self._stage(STORE, StoreHealth()):
            raise RequestFailed(ErrorCode.STORE_ERROR, "the store is down; no meme was made")
        result, judge_ms = await self._pipeline(request)
        lap("pipeline")
        timings.update(result.timings, **judge_ms)
        timings["pipeline_total"] = timings.pop("total")
        fmt = get_format(result.caption.format)
        meme_id = new_id()
        png = await self._stage(RENDER, RenderMeme(fmt.name, fmt.layout, result.caption.texts,
                                                   f"{fmt.name}:{request.seed}"))
        lap("render")
        meme = build_meme(meme_id, request, fmt, result, self.mode, timings,
                          self.program.provider)
        await self._stage(STORE, SaveMeme(meme, png, None if request.fresh else key))
        lap("store")
        timings["total"] = (time.perf_counter() - began) * 1000
        return {**meme, "timings": {stage: round(ms, 2) for stage, ms in timings.items()}}
