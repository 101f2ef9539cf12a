"""Where the stages of one meme run (:class:`~memesys.pipeline.flow.Stages`), and the one
judging fan-out every ``parallel`` placement uses.

- :class:`LocalStages`: the sequential reference, every stage one after another in the
  caller's task (:func:`run_sequential` runs it to the end from synchronous code;
  ``MemeProgram.forward`` does);
- :class:`ParallelStages`: the ``parallel`` placement's common part, the writing stages one
  after another in the caller's task; the in-process engine and the tree's generator workers
  subclass it, saying where the judging group runs.

Every LM stage is a coroutine awaited on the caller's event loop (DSPy's async path,
:func:`memesys.pipeline.predict.run`): a call in flight holds no thread, so a process holds as
many calls at once as its bulkheads and in-flight bounds let it, not as many as it has threads.
:func:`judge_at_once` is the judging group itself, "the three verifiers and the scorer at once"
(one task each), used by the in-process engine and by the tree's verifier workers alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from dspy.utils.exceptions import LMError

from memesys.llm import client
from memesys.llm.hedging import Fanout
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
R = TypeVar("R")


class Place(Protocol):
    """How a placement runs one judging stage: ``place(name, call)`` answers what
    ``call(handle)`` answers, on the handle and accounted as the placement does it."""

    def __call__(self, name: str, call: Callable[[LMHandle], Awaitable[T]]) -> Awaitable[T]: ...


@dataclass(frozen=True)
class JudgingAnswers:
    """What the judging group of a draft answered: each verifier's Verdict and the scorer's
    Scores, or the exception its call raised."""

    verdicts: dict[str, Verdict | BaseException]
    score: Scores | BaseException


async def _settled(answer: Awaitable[R]) -> R | BaseException:
    """``answer``'s value, or what it raised (``asyncio.gather``'s ``return_exceptions``, one
    awaitable at a time so each keeps its type)."""
    try:
        return await answer
    except (Exception, asyncio.CancelledError) as exc:
        return exc


async def judge_at_once(draft: Draft, program: Predictors | None, place: Place) -> JudgingAnswers:
    """The three verifiers and the scorer of ``draft`` at once, each placed by ``place`` with
    ``program``'s predictors (None: the built-in ones); a failed call is its exception. One
    :class:`~memesys.llm.hedging.Fanout`: the last call still running is hedged sooner."""
    group = Fanout()

    def check(verifier: str) -> Awaitable[Verdict]:
        return group.member(place(verifier, lambda h: verify(h, verifier, draft, program)))

    checks = [asyncio.ensure_future(_settled(check(v))) for v in VERIFIERS]
    scored = group.member(place("score", lambda h: score(h, draft, program)))
    scoring = asyncio.ensure_future(_settled(scored))
    await asyncio.gather(*checks, scoring)
    return JudgingAnswers(
        {v: task.result() for v, task in zip(VERIFIERS, checks)}, scoring.result()
    )


@dataclass
class ParallelStages:
    """The ``parallel`` placement's common part: each writing stage awaited in the meme's
    task; the subclass says where the judging group runs. ``judge_ms``: the group's wall time
    per round."""

    handle_for: Callable[[str], LMHandle]
    program: Predictors | None
    ledger: Ledger = field(default_factory=Ledger, init=False)
    judge_ms: dict[str, float] = field(default_factory=dict, init=False)

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], Awaitable[T]]) -> T:
        handle = self.handle_for(stage)
        return await self.ledger.call(key, handle, lambda: fn(handle))

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
    """The sequential reference: every stage in the caller's task, one after another."""

    handle_for: Callable[[str], LMHandle]
    ledger: Ledger = field(default_factory=Ledger)
    program: Predictors | None = None

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], Awaitable[T]]) -> T:
        handle = self.handle_for(stage)
        return await self.ledger.call(key, handle, lambda: fn(handle))

    async def judge(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict], Scores | None]:
        """The verifiers in order (an LM failure is an "unavailable" verdict), then the
        scorer only if the verdicts let the draft be served."""
        verdicts = {}
        for verifier in VERIFIERS:

            def check(h: LMHandle, v: str = verifier) -> Awaitable[Verdict]:
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
    fuse: bool = False,
) -> PipelineResult:
    """The sequential reference path run to the end from synchronous code (a thread with no
    running event loop: ``memesys.llm.client.run``): :func:`run_pipeline` on
    :class:`LocalStages`, each
    stage ``program``'s predictor (the built-in program's when None); select and write apart
    unless ``fuse`` (``MemeProgram.forward`` may ask for it; the daemon's sequential mode
    never does, and awaits :class:`LocalStages` on its own loop)."""
    return client.run(
        lambda: run_pipeline(
            LocalStages(handle_for, program=program),
            topic,
            format,
            style,
            audience,
            seed,
            policy,
            fuse=fuse,
        )
    )
