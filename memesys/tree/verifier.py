"""The verifier pool's workers: the three verifiers and the scorer, each call on its own.

A worker is an async actor, so one process holds many judging calls at once (each LM call runs
in a thread: DSPy's stages are synchronous). It answers a :class:`Judgement` (the Verdict or
Scores and the stage run: provider, model, tokens, ms). An LM failure or unusable output is a
failure of that one request; the generator decides what it means (decision.decide). Each
worker runs the predictors of its own copy of the program (``pipeline.program_path``), and
refuses a request from a generator that runs another one.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from dspy.utils.exceptions import LMError

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from memesys.config import LLMConfig, PipelineConfig
from memesys.domain.messages import Judgement, RunScore, RunVerifier
from memesys.errors import ErrorCode
from memesys.llm import bulkhead, served
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.program import load_configured
from memesys.pipeline.scoring import score
from memesys.pipeline.stage import OutputError, first_line
from memesys.pipeline.stages import StageRun, stage_handles
from memesys.pipeline.verification import VERIFIERS, verify
from memesys.tree.llmcalls import lm_failed, under_deadline


@dataclass(frozen=True)
class VerifierArgs:
    llm: LLMConfig
    stage_timeout_s: float
    max_in_flight: int
    pipeline: PipelineConfig  # the program to load: program_path
    redis_url: str = ""  # the LLM client layer's shared state (breakers, limits)
    key_prefix: str = "memesys"
    llm_processes: int = 1  # processes sharing the LLM limits (generators + verifiers)


def run_stage(handle: LMHandle, fn: Callable[[LMHandle], Any],
              stage: str = "score") -> Judgement:
    """Run one judging stage, timed; failures become RequestFailed with a stable code."""
    started = time.perf_counter()
    try:
        with served.tracking() as models, bulkhead.stage(stage):  # who answered; bulkhead
            result = fn(handle)
    except LMError as exc:
        raise lm_failed(exc) from exc
    except OutputError as exc:
        raise RequestFailed(exc.code, first_line(exc)) from exc
    ms = (time.perf_counter() - started) * 1000
    return Judgement(result, StageRun(handle.provider, served.model_of(models, handle.model),
                                      result.tokens, ms))


class VerifierWorker(AsyncActor):
    def on_start(self, args: VerifierArgs) -> None:
        self.max_in_flight = args.max_in_flight
        self.handle_for = stage_handles(args.llm, args.stage_timeout_s, args.redis_url,
                                        args.key_prefix, args.llm_processes)
        self.program = load_configured(args.pipeline)  # checked by the daemon before start-up

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, (RunVerifier, RunScore)):
            self._same_program(payload.program)
        program = self.program.program
        if isinstance(payload, RunVerifier) and payload.verifier in VERIFIERS:
            handle = self.handle_for(payload.verifier)
            return asyncio.to_thread(under_deadline, run_stage, handle,
                                     lambda h: verify(h, payload.verifier, payload.draft, program),
                                     payload.verifier)
        if isinstance(payload, RunScore):
            return asyncio.to_thread(under_deadline, run_stage, self.handle_for("score"),
                                     lambda h: score(h, payload.draft, program))
        return super().handle(payload)

    def _same_program(self, wanted: str) -> None:
        """Judge only for a generator running this worker's program (its file changed between
        the two workers' starts otherwise): the verdict would describe another program."""
        if wanted and wanted != self.program.hash:
            raise RequestFailed(ErrorCode.UNAVAILABLE,
                                f"this verifier runs program {self.program.hash}, the request "
                                f"is for {wanted}: restart the daemon after changing "
                                f"pipeline.program_path's file")
