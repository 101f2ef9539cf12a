"""The pipeline's flow: every stage of one meme in order, wherever each stage runs.

select -> write (or both in one call, "select_write", when ``fuse`` is set) -> the judging
group (appropriateness, factuality, instruction_following, score) -> refinement rounds
(rewrite, the judging group again) while the policy asks for them.
Each stage runs on its own handle (``handle_for(stage)``) and is timed and accounted
(provider, model, tokens) in a :class:`Ledger`. *Where* the stages run is a :class:`Stages`
(``memesys.pipeline.placements``): the sequential reference and the ``parallel`` placements
of both engines share this flow, the same stage functions and the same pure policies (decide,
apply_verdicts, should_refine).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from dspy.utils.exceptions import LMError

from memesys.errors import ErrorCode
from memesys.llm import bulkhead, served
from memesys.llm.errors import failure_of
from memesys.pipeline.decision import Decision, decide
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import Predictors
from memesys.pipeline.refinement import (
    LATE,
    RefinePolicy,
    Round,
    critique_for,
    refine,
    should_refine,
)
from memesys.pipeline.scoring import DIMENSIONS, Scores, apply_verdicts
from memesys.pipeline.verification import Verdict
from memesys.pipeline.writing import (
    Caption,
    choose_format,
    clean_topic,
    requested,
    select_and_write,
    write_texts,
)
from memesys.telemetry import tracing

SCOPE = "memesys.pipeline"  # the tracer of the pipeline's spans
EVALUATION = "gen_ai.evaluation.result"  # the event of each verdict and score (gen_ai semconv)


@dataclass(frozen=True)
class StageRun:
    """One stage call as it happened: who ran it, what it cost, how long it took, and how many
    hedges the transport sent for it (memesys.llm.hedging)."""

    provider: str
    model: str
    tokens: int
    ms: float
    hedges: int = 0

    @classmethod
    def of(cls, handle: LMHandle, calls: served.Served, tokens: int, ms: float) -> StageRun:
        """The run of a stage on ``handle`` whose calls the transport reported in ``calls``."""
        return cls(handle.provider, calls.model(handle.model), tokens, ms, calls.hedges)


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
    refinement round, and per-stage accounting: ``stages`` by stage key ("select" and "write", or
    "select_write" when fused; the verifiers, "score"; "refine_N" and "<verifier>_N",
    "score_N" for round N) and
    ``timings`` in ms by the same keys plus "total". ``refinement_skipped`` says why a round the
    score called for did not run: LATE (past the policy's ``within_s``) or ``llm_rate_limited``
    (no send time for it before the deadline); None when none was skipped."""

    caption: Caption
    draft: Draft
    verdicts: Mapping[str, Verdict]
    decision: Decision
    scores: Scores
    rounds: tuple[Round, ...]
    stages: Mapping[str, StageRun]
    timings: Mapping[str, float]
    refinement_skipped: str | None = None


class Costed(Protocol):
    """What a stage answers: anything that says the tokens it cost."""

    @property
    def tokens(self) -> int: ...


T = TypeVar("T", bound=Costed)


@dataclass
class Ledger:
    """Times and accounts each stage call under its key."""

    stages: dict[str, StageRun] = field(default_factory=dict)

    async def call(self, key: str, handle: LMHandle, stage: Callable[[], Awaitable[T]]) -> T:
        """``stage()`` awaited in this task, timed and accounted under ``key``. Who answered
        and the bulkhead are context variables of this task (concurrent stages each run in a
        task of their own, so each sees its own)."""
        start = time.perf_counter()
        with (
            tracing.span(f"stage {key}", {"memesys.stage": key}, SCOPE),
            served.tracking(key) as calls,
            bulkhead.stage(key),  # who answered; its bulkhead
        ):
            try:
                result = await stage()
            except BaseException:
                self.record(key, StageRun.of(handle, calls, 0, _ms(start)))
                raise
        self.record(key, StageRun.of(handle, calls, result.tokens, _ms(start)))
        return result

    def record(self, key: str, run: StageRun) -> None:
        self.stages[key] = run


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class Stages(Protocol):
    """Where the stages of one meme run: the pipeline's logic is the same in both modes.

    ``call`` runs one LM stage (select, write, select_write, refine) accounted under ``key``;
    ``judge`` runs the three verifiers and the scorer on a draft and returns the verdicts and
    the raw scores (None when the verdicts refuse the draft and the scorer was skipped).
    ``program`` is the MemeProgram whose predictors the stages run (None: the built-in one);
    stages judged elsewhere run that place's copy of the same program.
    """

    ledger: Ledger
    program: Predictors | None

    async def call(self, key: str, stage: str, fn: Callable[[LMHandle], Awaitable[T]]) -> T: ...

    async def judge(
        self, draft: Draft, suffix: str
    ) -> tuple[dict[str, Verdict], Scores | None]: ...


class Observer(Protocol):
    """Hears of a meme's steps as each ends (the maker's journal and speculative picture):
    ``drafted`` the first caption, ``judged`` a draft's verdicts and its scores (None when the
    verdicts refused it) in round ``round`` (0: the first draft), ``rewritten`` round
    ``round``'s caption."""

    def drafted(self, caption: Caption) -> None: ...

    def judged(
        self, round: int, verdicts: Mapping[str, Verdict], scores: Scores | None
    ) -> None: ...

    def rewritten(self, round: int, caption: Caption) -> None: ...


async def run_pipeline(
    stages: Stages,
    topic: str,
    format: str | None = None,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    policy: RefinePolicy = RefinePolicy(),
    observer: Observer | None = None,
    fuse: bool = False,
) -> PipelineResult:
    """One meme through every stage; ``observer`` hears of each step as it ends (the engines
    start the first caption's picture while it is judged); ``fuse``: select and
    write in one call ("select_write") unless the request names its format. Raises Refused
    when the first draft may not be served (decide), UnknownFormat/CaptionError on a bad
    request or unusable model output, and DSPy's LMError when a stage other than a verifier
    cannot reach its LM. A refined draft the
    verifiers rule out is recorded as a refused round (overall 0, not scored) and never kept;
    a refinement whose rewrite or scorer is refused for rate (``llm_rate_limited``: its calls
    are past the meme's booking, :mod:`memesys.pipeline.admission`) is skipped, not a failure:
    the best draft so far is kept."""
    began = time.perf_counter()
    topic = clean_topic(topic)
    if fuse and not format:
        caption = await stages.call(
            "select_write",
            "select_write",
            lambda h: select_and_write(h, topic, style, audience, seed, stages.program),
        )
    else:
        choice = (
            requested(format)
            if format
            else await stages.call(
                "select", "select", lambda h: choose_format(h, topic, seed, stages.program)
            )
        )
        caption = await stages.call(
            "write",
            "write",
            lambda h: write_texts(h, topic, choice, style, audience, seed, stages.program),
        )
    if observer is not None:
        observer.drafted(caption)
    draft = Draft.from_caption(caption, topic, style, audience, seed)
    verdicts, raw = await _judged(stages, draft, 0)
    scores = None if raw is None else apply_verdicts(raw, verdicts)
    if observer is not None:
        observer.judged(0, verdicts, scores)
    decision = decide(verdicts)
    decision.enforce()
    assert scores is not None  # judge scores every draft it does not refuse
    best = Judged(caption, draft, verdicts, decision, scores)
    rounds: list[Round] = []
    skipped: str | None = None
    while should_refine(best.scores.overall, rounds[-1] if rounds else None, policy):
        if time.perf_counter() - began >= policy.within_s:
            skipped = LATE
            break
        n, kept = len(rounds) + 1, best
        critique = critique_for(kept.scores, kept.verdicts)
        try:
            refined = await stages.call(
                f"refine_{n}",
                "refine",
                lambda h: refine(h, kept.draft, critique, stages.program),  # noqa: B023 (called at once)
            )
            refined = replace(refined, reason=caption.reason)
            if observer is not None:
                observer.rewritten(n, refined)
            draft = kept.draft.with_texts(refined.texts)
            verdicts, raw = await _judged(stages, draft, n)
        except LMError as exc:
            if failure_of(exc).code is not ErrorCode.LLM_RATE_LIMITED:
                raise
            skipped = ErrorCode.LLM_RATE_LIMITED.value
            break  # no send time for it before the deadline: the best so far ships
        decision = decide(verdicts)
        statuses = {name: v.status for name, v in verdicts.items()}
        scores = None if raw is None else apply_verdicts(raw, verdicts)
        if observer is not None:
            observer.judged(n, verdicts, scores)
        if decision.refusal is not None:
            rounds.append(
                Round(n, refined.texts, 0.0, statuses, -kept.scores.overall, decision.refusal)
            )
            continue  # should_refine stops after a refused round
        assert scores is not None  # judge scores every draft it does not refuse
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
        skipped,
    )


async def _judged(
    stages: Stages, draft: Draft, round: int
) -> tuple[dict[str, Verdict], Scores | None]:
    """The judging group of round ``round`` (0: the first draft), in a span of its own that
    records each verdict and each score the scorer gave as a ``gen_ai.evaluation.result`` event
    (not the reasons nor the critique: they may quote the topic)."""
    with tracing.span("stage judge", {"memesys.round": round}, SCOPE) as span:
        verdicts, raw = await stages.judge(draft, f"_{round}" if round else "")
        if span is not None:
            for name, verdict in verdicts.items():
                span.add_event(
                    EVALUATION,
                    {
                        "gen_ai.evaluation.name": name,
                        "gen_ai.evaluation.score.label": verdict.status,
                        "gen_ai.evaluation.score.value": verdict.confidence,
                    },
                )
            for name in () if raw is None else (*DIMENSIONS, "overall"):
                value = float(getattr(raw, name))
                span.add_event(
                    EVALUATION,
                    {"gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": value},
                )
        return verdicts, raw
