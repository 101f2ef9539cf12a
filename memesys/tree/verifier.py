"""The verifier pool's workers: the three verifiers and the scorer of a draft, all at once.

A worker is an async actor, so one process holds many drafts' judging at once: each LM call is
awaited on the worker's event loop (DSPy's async path), one task per stage, holding no thread
of its own; the group is the pipeline's one judging fan-out,
:func:`memesys.pipeline.placements.judge_at_once`. A :class:`JudgeDraft` is answered
with one :class:`Judgements`: per stage, a :class:`StageJudgement` (the Verdict or Scores and
the stage run: provider, model, tokens, ms) or the failure of that stage's call (an LM failure
or unusable output); the generator decides what it means (decision.decide). One message each
way per draft, not one per stage: a hop costs CPU on both ends. Each
worker runs the predictors of its own copy of the program (``pipeline.program_path``), and
refuses a request from a generator that runs another one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dspy.utils.exceptions import LMError

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from actors.messages import Failure
from memesys.config import LLMConfig, PipelineConfig
from memesys.errors import ErrorCode
from memesys.llm import bulkhead, reservations, served
from memesys.llm.reservations import NO_TIMES, Times
from memesys.pipeline import dspy_patches
from memesys.pipeline.draft import Draft
from memesys.pipeline.errors import MemeFailed, first_line, lm_failed
from memesys.pipeline.flow import SCOPE, Costed, StageRun
from memesys.pipeline.lm import LMHandle, stage_handles
from memesys.pipeline.placements import judge_at_once
from memesys.pipeline.predict import OutputError
from memesys.pipeline.program import load_configured
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import Verdict
from memesys.telemetry import tracing
from memesys.tree.judging import JudgeDraft, Judgements, StageJudgement
from memesys.tree.llmcalls import request_failed

C = TypeVar("C", bound=Costed)
R = TypeVar("R", Verdict, Scores)


@dataclass(frozen=True)
class VerifierArgs:
    llm: LLMConfig
    stage_timeout_s: float
    max_in_flight: int
    pipeline: PipelineConfig  # the program to load: program_path
    redis_url: str = ""  # the LLM client layer's shared state (breakers, limits)
    key_prefix: str = "memesys"
    llm_processes: int = 1  # processes sharing the LLM limits (generators + verifiers)


async def run_stage(
    handle: LMHandle, fn: Callable[[LMHandle], Awaitable[C]], stage: str
) -> tuple[C, StageRun]:
    """Run one judging stage in this task, timed: its result and run; failures become
    RequestFailed with a stable code."""
    started = time.perf_counter()
    try:
        with (
            tracing.span(f"stage {stage}", {"memesys.stage": stage}, SCOPE),
            served.tracking(stage) as calls,  # who answered
            bulkhead.stage(stage),
        ):
            result = await fn(handle)
    except LMError as exc:
        raise request_failed(lm_failed(exc)) from exc
    except OutputError as exc:
        raise request_failed(MemeFailed(exc.code, first_line(exc))) from exc
    ms = (time.perf_counter() - started) * 1000
    return result, StageRun.of(handle, calls, result.tokens, ms)


def _judged(
    name: str, answer: R | BaseException, runs: Mapping[str, StageRun]
) -> StageJudgement[R] | Failure:
    """Stage ``name``'s answer for the generator: its judgement with its run, or the Failure
    of its call (any other exception is a bug, raised: it crashes the worker, as in any
    handler)."""
    if isinstance(answer, RequestFailed):
        return answer.failure
    if isinstance(answer, BaseException):
        raise answer
    return StageJudgement(answer, runs[name])


class VerifierWorker(AsyncActor):
    def on_start(self, args: VerifierArgs) -> None:
        tracing.start(self.name)
        dspy_patches.apply()
        self.max_in_flight = args.max_in_flight
        # A draft's stages run at once, each awaited on this loop, holding no thread; what
        # still blocks (DSPy's advisory pricing of each answer) is a brief hop to the loop's
        # thread pool, whose threads are made only when every one is busy.
        self.handle_for = stage_handles(
            args.llm, args.stage_timeout_s, args.redis_url, args.key_prefix, args.llm_processes
        )
        self.program = load_configured(args.pipeline)  # checked by the daemon before start-up

    def on_stop(self) -> None:
        try:
            super().on_stop()
        finally:
            tracing.stop()

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, JudgeDraft):
            self._same_program(payload.program)
            return self.judge(payload.draft, payload.reserved)
        return super().handle(payload)

    async def judge(self, draft: Draft, reserved: Times = NO_TIMES) -> Judgements:
        """Every judging stage at once, each call on a send time of ``reserved`` (the meme's
        booking) while one is left; a stage whose call fails answers its Failure."""
        with reservations.holding(reserved):
            return await self._judge(draft)

    async def _judge(self, draft: Draft) -> Judgements:
        runs: dict[str, StageRun] = {}

        async def place(name: str, call: Callable[[LMHandle], Awaitable[C]]) -> C:
            result, runs[name] = await run_stage(self.handle_for(name), call, name)
            return result

        answers = await judge_at_once(draft, self.program.program, place)
        verdicts = tuple(
            (name, _judged(name, answer, runs)) for name, answer in answers.verdicts.items()
        )
        return Judgements(verdicts, _judged("score", answers.score, runs))

    def _same_program(self, wanted: str) -> None:
        """Judge only for a generator running this worker's program (its file changed between
        the two workers' starts otherwise): the verdict would describe another program."""
        if wanted and wanted != self.program.hash:
            raise RequestFailed(
                ErrorCode.UNAVAILABLE,
                f"this verifier runs program {self.program.hash}, the request "
                f"is for {wanted}: restart the daemon after changing "
                f"pipeline.program_path's file",
            )
