"""Where the stages of one meme run (:class:`~memesys.pipeline.flow.Stages`), and the one
judging fan-out every ``parallel`` placement uses.

- :class:`LocalStages`: the sequential reference, every stage one after another in this thread
  (:func:`run_sequential`; ``MemeProgram.forward`` runs it);
- :class:`BlockingStages`: the ``parallel`` placement's common part, each LM stage a blocking
  call off the event loop; the in-process engine's threads and the tree's generator workers
  subclass it, saying where the judging group runs.

:func:`judge_at_once` is the judging group itself, "the three verifiers and the scorer at once",
used by the in-process engine and by the tree's verifier workers alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dspy.utils.exceptions import LMError

from memesys.pipeline.decision import decide
from memesys.pipeline.draft import Draft
from memesys.pipeline.errors import first_line
from memesys.pipeline.flow import Costed, Ledger, PipelineResult, run_pipeline
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import Predictors
from memesys.pipeline.refinement import RefinePolicy
from memesys.pipeline.scoring import Scores, score
from memesys.pipeline.verification import VERIFIERS, Verdict, verify

T = TypeVar("T", bound=Costed)
A = TypeVar("A")

# One judging stage: its name (a verifier's, or "score") and the call on a handle.
JudgingStage = tuple[str, Callable[[LMHandle], Verdict | Scores]]


def judging_stages(draft: Draft, program: Predictors | None) -> tuple[JudgingStage, ...]:
    """The judging group of ``draft``: each verifier, then the scorer, with ``program``'s
    predictors (None: the built-in ones)."""

    def verifier(name: str) -> JudgingStage:
        return name, lambda h: verify(h, name, draft, program)

    return (*(verifier(v) for v in VERIFIERS), ("score", lambda h: score(h, draft, program)))


async def judge_at_once(
    draft: Draft,
    program: Predictors | None,
    place: Callable[[str, Callable[[LMHandle], Verdict | Scores]], Awaitable[A]],
) -> dict[str, A | BaseException]:
    """The three verifiers and the scorer of ``draft`` at once: ``place(name, call)`` runs one
    where the placement runs it; the answers by stage name, a failed one as its exception."""
    stages = judging_stages(draft, program)
    answers = await asyncio.gather(
        *(place(name, call) for name, call in stages), return_exceptions=True
    )
    return {name: answer for (name, _), answer in zip(stages, answers)}


@dataclass
class BlockingStages:
    """The ``parallel`` placement's common part: each LM stage is a blocking call that
    ``run`` takes off the event loop (``run(fn, *args)``: a thread under the request's
    deadline, in the tree's workers or the gateway's pool); the subclass says where the
    judging group runs. ``judge_ms``: the group's wall time per round."""

    run: Callable[..., Awaitable[Any]]
    handle_for: Callable[[str], LMHandle]
    program: Predictors | None
    ledger: Ledger = field(default_factory=Ledger, init=False)
    judge_ms: dict[str, float] = field(default_factory=dict, init=False)

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T:
        handle = self.handle_for(stage)
        result: T = await self.run(self.ledger.call, key, handle, lambda: fn(handle))
        return result

    async def judge(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict], Scores | None]:
        """The three verifiers and the scorer at once (:meth:`judge_all`); a verifier whose
        call fails is an "unavailable" verdict; a failed scorer fails the meme unless the
        verdicts refuse it anyway."""
        started = time.perf_counter()
        verdicts, scored = await self.judge_all(draft, suffix)
        self.judge_ms["judge" + suffix] = (time.perf_counter() - started) * 1000
        if not isinstance(scored, BaseException):
            return verdicts, scored
        if decide(verdicts).refusal is not None:
            return verdicts, None  # refused anyway; the missing score changes nothing
        raise scored

    async def judge_all(
        self, draft: Draft, suffix: str
    ) -> tuple[dict[str, Verdict], Scores | BaseException]:
        """Every verdict (unavailable where its call failed) and the scores, or why the scorer
        failed: where the group runs."""
        raise NotImplementedError


@dataclass
class LocalStages:
    """The sequential reference: every stage in this thread, one after another."""

    handle_for: Callable[[str], LMHandle]
    ledger: Ledger = field(default_factory=Ledger)
    program: Predictors | None = None

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T:
        handle = self.handle_for(stage)
        return self.ledger.call(key, handle, lambda: fn(handle))

    async def judge(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict], Scores | None]:
        """The verifiers in order (an LM failure is an "unavailable" verdict), then the
        scorer only if the verdicts let the draft be served."""
        verdicts = {}
        for verifier in VERIFIERS:

            def check(h: LMHandle, v: str = verifier) -> Verdict:
                return verify(h, v, draft, self.program)

            try:
                verdicts[verifier] = await self.call(verifier + suffix, verifier, check)
            except LMError as exc:
                verdicts[verifier] = Verdict.unavailable(verifier, first_line(exc))
        if decide(verdicts).refusal is not None:
            return verdicts, None
        return verdicts, await self.call(
            "score" + suffix, "score", lambda h: score(h, draft, self.program)
        )


def run_sequential(
    handle_for: Callable[[str], LMHandle],
    topic: str,
    format: str | None = None,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    policy: RefinePolicy = RefinePolicy(),
    program: Predictors | None = None,
) -> PipelineResult:
    """The sequential reference path: :func:`run_pipeline` with every stage in this thread,
    each one ``program``'s predictor (the built-in program's when None)."""
    return asyncio.run(
        run_pipeline(
            LocalStages(handle_for, program=program), topic, format, style, audience, seed, policy
        )
    )
