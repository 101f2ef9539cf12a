"""The sequential reference pipeline: every stage of one meme, one after another, in one place.

select -> write -> appropriateness -> factuality -> instruction_following -> score, then
refinement rounds (rewrite, the three verifiers, score) while the policy asks for them. Each
stage runs on its own handle (``handle_for(stage)``) and is timed and accounted (provider,
model, tokens), so this path is also the yardstick the parallel actor version is measured and
checked against: both are built from the same stage functions and the same pure policies
(decide, apply_verdicts, should_refine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dspy.utils.exceptions import LMError

from memesys.config import LLMConfig
from memesys.llm import bulkhead, served
from memesys.llm.transport import Policy
from memesys.pipeline.decision import Decision, decide
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import OFFLINE, LMHandle, build_lm
from memesys.pipeline.refinement import (
    RefinePolicy,
    Round,
    critique_for,
    refine,
    should_refine,
)
from memesys.pipeline.scoring import Scores, apply_verdicts, score
from memesys.pipeline.stage import first_line
from memesys.pipeline.verification import VERIFIERS, Verdict, verify
from memesys.pipeline.writing import (
    Caption,
    choose_format,
    clean_topic,
    requested,
    write_texts,
)

if TYPE_CHECKING:
    from memesys.pipeline.program import MemeProgram

# The [llm] key naming each stage's model; empty means [llm] model.
STAGE_MODEL_KEYS: Mapping[str, str] = {
    "select": "select_model",
    "write": "write_model",
    "appropriateness": "verify_model",
    "factuality": "verify_model",
    "instruction_following": "verify_model",
    "score": "score_model",
    "refine": "refine_model",
}


def stage_handles(
    llm: LLMConfig,
    stage_timeout_s: float,
    redis_url: str = "",
    key_prefix: str = "memesys",
    processes: int = 1,
) -> Callable[[str], LMHandle]:
    """handle_for(stage) from the [llm] section: one handle per distinct model, each attempt
    bounded by min(llm.timeout_s, stage_timeout_s, time left before the request's deadline),
    at most llm.max_attempts attempts per call, through each model's circuit breaker and rate
    limits, shared through ``redis_url`` when given by ``processes`` processes (memesys.llm)."""
    timeout_s = min(llm.timeout_s, stage_timeout_s)
    policy = Policy(
        timeout_s=timeout_s,
        max_attempts=llm.max_attempts,
        max_connections=llm.max_connections,
        breaker_failures=llm.breaker_failures,
        breaker_reset_s=llm.breaker_reset_s,
        rate_limit_rps=llm.rate_limit_rps,
        rate_limit_tpm=llm.rate_limit_tpm,
        daily_token_budget=llm.daily_token_budget,
        prices=llm.prices,
        max_concurrent_writes=llm.max_concurrent_writes,
        max_concurrent_judgements=llm.max_concurrent_judgements,
        redis_url=redis_url,
        key_prefix=key_prefix,
        processes=processes,
    )
    fallbacks = tuple(
        m.strip() for m in llm.fallback_models.split(",") if m.strip() and m.strip() != OFFLINE
    )
    built: dict[str, LMHandle] = {}

    def handle_for(stage: str) -> LMHandle:
        model = getattr(llm, STAGE_MODEL_KEYS[stage]) or llm.model
        if model not in built:
            built[model] = build_lm(model, llm.api_key, llm.base_url, timeout_s, policy, fallbacks)
        return built[model]

    return handle_for


@dataclass(frozen=True)
class StageRun:
    """One stage call as it happened: who ran it, what it cost, how long it took."""

    provider: str
    model: str
    tokens: int
    ms: float


@dataclass(frozen=True)
class Judged:
    """A servable draft with everything the judging stages said about it."""

    caption: Caption
    draft: Draft
    verdicts: Mapping[str, Verdict]
    decision: Decision
    scores: Scores


@dataclass(frozen=True)
class PipelineResult:
    """The kept caption (the first one or the best refinement) and its judgement, every
    refinement round, and per-stage accounting: ``stages`` by stage key ("select", "write",
    the verifiers, "score"; "refine_N" and "<verifier>_N", "score_N" for round N) and
    ``timings`` in ms by the same keys plus "total"."""

    caption: Caption
    draft: Draft
    verdicts: Mapping[str, Verdict]
    decision: Decision
    scores: Scores
    rounds: tuple[Round, ...]
    stages: Mapping[str, StageRun]
    timings: Mapping[str, float]


class _Costed(Protocol):
    tokens: int


T = TypeVar("T", bound=_Costed)


@dataclass
class Ledger:
    """Times and accounts each stage call under its key."""

    stages: dict[str, StageRun] = field(default_factory=dict)

    def call(self, key: str, handle: LMHandle, stage: Callable[[], T]) -> T:
        start = time.perf_counter()
        with served.tracking() as models, bulkhead.stage(key):  # who answered; its bulkhead
            try:
                result = stage()
            except BaseException:
                self.record(
                    key,
                    StageRun(handle.provider, served.model_of(models, handle.model), 0, _ms(start)),
                )
                raise
        self.record(
            key,
            StageRun(
                handle.provider, served.model_of(models, handle.model), result.tokens, _ms(start)
            ),
        )
        return result

    def record(self, key: str, run: StageRun) -> None:
        self.stages[key] = run


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class Stages(Protocol):
    """Where the stages of one meme run: the pipeline's logic is the same in both modes.

    ``call`` runs one LM stage (select, write, refine) accounted under ``key``; ``judge`` runs
    the three verifiers and the scorer on a draft and returns the verdicts and the raw scores
    (None when the verdicts refuse the draft and the scorer was skipped). ``program`` is the
    MemeProgram whose predictors the stages run (None: the built-in one); stages judged
    elsewhere run that place's copy of the same program.
    """

    ledger: Ledger
    program: MemeProgram | None

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T: ...

    async def judge(
        self, draft: Draft, suffix: str
    ) -> tuple[dict[str, Verdict], Scores | None]: ...


@dataclass
class BlockingStages:
    """The ``parallel`` placement's common part: each LM stage is a blocking call that
    ``run`` takes off the event loop (``run(fn, *args)``: a thread under the request's
    deadline, in the tree's workers or the gateway's pool); the subclass says where the
    judging group runs. ``judge_ms``: the group's wall time per round."""

    run: Callable[..., Awaitable[Any]]
    handle_for: Callable[[str], LMHandle]
    program: MemeProgram | None
    ledger: Ledger = field(default_factory=Ledger, init=False)
    judge_ms: dict[str, float] = field(default_factory=dict, init=False)

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T:
        handle = self.handle_for(stage)
        return await self.run(self.ledger.call, key, handle, lambda: fn(handle))

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
    program: MemeProgram | None = None

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], T]) -> T:
        handle = self.handle_for(stage)
        return self.ledger.call(key, handle, lambda: fn(handle))

    async def judge(self, draft: Draft, suffix: str) -> tuple[dict[str, Verdict], Scores | None]:
        """The verifiers in order (an LM failure is an "unavailable" verdict), then the
        scorer only if the verdicts let the draft be served."""
        verdicts = {}
        for verifier in VERIFIERS:
            try:
                verdicts[verifier] = await self.call(
                    verifier + suffix,
                    verifier,
                    lambda h, v=verifier: verify(h, v, draft, self.program),
                )
            except LMError as exc:
                verdicts[verifier] = Verdict.unavailable(verifier, first_line(exc))
        if decide(verdicts).refusal is not None:
            return verdicts, None
        return verdicts, await self.call(
            "score" + suffix, "score", lambda h: score(h, draft, self.program)
        )


async def run_pipeline(
    stages: Stages,
    topic: str,
    format: str | None = None,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    policy: RefinePolicy = RefinePolicy(),
    drafted: Callable[[Caption], None] | None = None,
) -> PipelineResult:
    """One meme through every stage; ``drafted`` hears of the first caption as soon as it is
    written (the engines start its picture then, while it is judged). Raises
    Refused when the first draft may not be served
    (decide), UnknownFormat/CaptionError on a bad request or unusable model output, and DSPy's
    LMError when a stage other than a verifier cannot reach its LM. A refined draft the
    verifiers rule out is recorded as a refused round (overall 0, not scored) and never kept."""
    began = time.perf_counter()
    topic = clean_topic(topic)
    if format:
        choice = requested(format)
    else:
        choice = await stages.call(
            "select", "select", lambda h: choose_format(h, topic, seed, stages.program)
        )
    caption = await stages.call(
        "write",
        "write",
        lambda h: write_texts(h, topic, choice, style, audience, seed, stages.program),
    )
    if drafted is not None:
        drafted(caption)
    draft = Draft.from_caption(caption, topic, style, audience, seed)
    verdicts, raw = await stages.judge(draft, "")
    decision = decide(verdicts)
    decision.enforce()
    best = Judged(caption, draft, verdicts, decision, apply_verdicts(raw, verdicts))
    rounds: list[Round] = []
    while should_refine(best.scores.overall, rounds[-1] if rounds else None, policy):
        n, kept = len(rounds) + 1, best
        critique = critique_for(kept.scores, kept.verdicts)
        refined = await stages.call(
            f"refine_{n}",
            "refine",
            lambda h: refine(h, kept.draft, critique, stages.program),  # noqa: B023 (called at once)
        )
        refined = replace(refined, reason=caption.reason)
        draft = kept.draft.with_texts(refined.texts)
        verdicts, raw = await stages.judge(draft, f"_{n}")
        decision = decide(verdicts)
        statuses = {name: v.status for name, v in verdicts.items()}
        if decision.refusal is not None:
            rounds.append(
                Round(n, refined.texts, 0.0, statuses, -kept.scores.overall, decision.refusal)
            )
            continue  # should_refine stops after a refused round
        scores = apply_verdicts(raw, verdicts)
        rounds.append(
            Round(n, refined.texts, scores.overall, statuses, scores.overall - kept.scores.overall)
        )
        if scores.overall > kept.scores.overall:
            best = Judged(refined, draft, verdicts, decision, scores)
    timings = {key: run.ms for key, run in stages.ledger.stages.items()}
    timings["total"] = _ms(began)
    return PipelineResult(
        best.caption,
        best.draft,
        best.verdicts,
        best.decision,
        best.scores,
        tuple(rounds),
        dict(stages.ledger.stages),
        timings,
    )


def run_sequential(
    handle_for: Callable[[str], LMHandle],
    topic: str,
    format: str | None = None,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    policy: RefinePolicy = RefinePolicy(),
    program: MemeProgram | None = None,
) -> PipelineResult:
    """The sequential reference path: :func:`run_pipeline` with every stage in this thread,
    each one ``program``'s predictor (the built-in program's when None)."""
    return asyncio.run(
        run_pipeline(
            LocalStages(handle_for, program=program), topic, format, style, audience, seed, policy
        )
    )
