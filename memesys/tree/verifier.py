"""The verifier pool's workers: the three verifiers and the scorer, each call on its own.

A worker is an async actor, so one process holds many judging calls at once (each LM call runs
in a thread: DSPy's stages are synchronous). It answers a :class:`Judgement` (the Verdict or
Scores and the stage run: provider, model, tokens, ms). An LM failure or unusable output is a
failure of that one request; the generator decides what it means (decision.decide).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from dspy.utils.exceptions import LMError

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from memesys.pipeline.lm import LMHandle
from memesys.domain.messages import Judgement, RunScore, RunVerifier
from memesys.pipeline.stages import StageRun, stage_handles
from memesys.pipeline.scoring import score
from memesys.pipeline.stage import OutputError, first_line
from memesys.pipeline.verification import VERIFIERS, verify

LM_UNAVAILABLE = "llm_unavailable"
BAD_OUTPUT = "bad_output"


@dataclass(frozen=True)
class VerifierArgs:
    llm: dict
    stage_timeout_s: float
    max_in_flight: int


def run_stage(handle: LMHandle, fn: Callable[[LMHandle], Any]) -> Judgement:
    """Run one judging stage, timed; failures become RequestFailed with a stable code."""
    started = time.perf_counter()
    try:
        result = fn(handle)
    except LMError as exc:
        raise RequestFailed(LM_UNAVAILABLE, first_line(exc)) from exc
    except OutputError as exc:
        raise RequestFailed(BAD_OUTPUT, first_line(exc)) from exc
    ms = (time.perf_counter() - started) * 1000
    return Judgement(result, StageRun(handle.provider, handle.model, result.tokens, ms))


class VerifierWorker(AsyncActor):
    def on_start(self, args: VerifierArgs) -> None:
        self.max_in_flight = args.max_in_flight
        self.handle_for = stage_handles(args.llm, args.stage_timeout_s)

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, RunVerifier) and payload.verifier in VERIFIERS:
            handle = self.handle_for(payload.verifier)
            return asyncio.to_thread(run_stage, handle,
                                     lambda h: verify(h, payload.verifier, payload.draft))
        if isinstance(payload, RunScore):
            return asyncio.to_thread(run_stage, self.handle_for("score"),
                                     lambda h: score(h, payload.draft))
        return super().handle(payload)
