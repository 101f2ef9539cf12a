"""The sequential reference pipeline: every stage of one meme, one after another, in one place.

select -> write -> appropriateness -> factuality -> instruction_following -> score, then
refinement rounds (rewrite, the three verifiers, score) while the policy asks for them. Each
stage runs on its own handle (``handle_for(stage)``) and is timed and accounted (provider,
model, tokens), so this path is also the yardstick the parallel actor version is measured and
checked against: both are built from the same stage functions and the same pure policies
(decide, apply_verdicts, should_refine).
"""
from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import time  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from typing import Any, Protocol, TypeVar  # noqa: E402

from dspy.utils.exceptions import LMError  # noqa: E402

from memesys.decision import Decision, decide  # noqa: E402
from memesys.draft import Draft  # noqa: E402
from memesys.lm import LMHandle, build_lm  # noqa: E402
from memesys.program import (  # noqa: E402
    Caption,
    choose_format,
    clean_topic,
    requested,
    write_texts,
)
from memesys.refinement import (  # noqa: E402
    RefinePolicy,
    Round,
    critique_for,
    refine,
    should_refine,
)
from memesys.scoring import Scores, apply_verdicts, score  # noqa: E402
from memesys.verification import VERIFIERS, Verdict, verify  # noqa: E402

# The [llm] key naming each stage's model; empty means [llm] model.
STAGE_MODEL_KEYS: Mapping[str, str] = {
    "select": "select_model", "write": "write_model", "appropriateness": "verify_model",
    "factuality": "verify_model", "instruction_following": "verify_model",
    "score": "score_model", "refine": "refine_model",
}


def stage_handles(llm: Mapping[str, Any], stage_timeout_s: float) -> Callable[[str], LMHandle]:
    """handle_for(stage) from the [llm] section: one handle per distinct model, each LM call
    bounded by min(llm.timeout_s, stage_timeout_s) (one attempt per call: the bound holds)."""
    timeout_s = min(float(llm["timeout_s"]), stage_timeout_s)
    built: dict[str, LMHandle] = {}

    def handle_for(stage: str) -> LMHandle:
        model = llm[STAGE_MODEL_KEYS[stage]] or llm["model"]
        if model not in built:
            built[model] = build_lm(model, llm["api_key"], llm["base_url"], timeout_s)
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
class _Ledger:
    """Times and accounts each stage call under its key."""

    stages: dict[str, StageRun] = field(default_factory=dict)

    def call(self, key: str, handle: LMHandle, stage: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            result = stage()
        except BaseException:
            self._record(key, handle, start, 0)
            raise
        self._record(key, handle, start, result.tokens)
        return result

    def _record(self, key: str, handle: LMHandle, start: float, tokens: int) -> None:
        ms = (time.perf_counter() - start) * 1000
        self.stages[key] = StageRun(handle.provider, handle.model, tokens, ms)


def _verify_all(handle_for: Callable[[str], LMHandle], ledger: _Ledger, draft: Draft,
                suffix: str) -> dict[str, Verdict]:
    """The three verifiers in order. One whose LM call fails is recorded "unavailable";
    decide() says what that means."""
    verdicts = {}
    for verifier in VERIFIERS:
        handle = handle_for(verifier)
        try:
            verdicts[verifier] = ledger.call(verifier + suffix, handle,
                                             lambda: verify(handle, verifier, draft))
        except LMError as exc:
            verdicts[verifier] = Verdict.unavailable(verifier, str(exc))
    return verdicts


def _score(handle_for: Callable[[str], LMHandle], ledger: _Ledger, draft: Draft,
           verdicts: Mapping[str, Verdict], suffix: str) -> Scores:
    handle = handle_for("score")
    return apply_verdicts(ledger.call("score" + suffix, handle, lambda: score(handle, draft)),
                          verdicts)


def run_sequential(handle_for: Callable[[str], LMHandle], topic: str, format: str | None = None,
                   style: str | None = None, audience: str | None = None, seed: int = 0,
                   policy: RefinePolicy = RefinePolicy()) -> PipelineResult:
    """One meme through every stage in order. Raises Refused when the first draft may not be
    served (decide), UnknownFormat/CaptionError on a bad request or unusable model output, and
    DSPy's LMError when a stage other than a verifier cannot reach its LM. A refined draft the
    verifiers rule out is recorded as a refused round (overall 0, not scored) and never kept."""
    began = time.perf_counter()
    ledger = _Ledger()
    topic = clean_topic(topic)
    if format:
        choice = requested(format)
    else:
        handle = handle_for("select")
        choice = ledger.call("select", handle, lambda: choose_format(handle, topic, seed))
    handle = handle_for("write")
    caption = ledger.call("write", handle,
                          lambda: write_texts(handle, topic, choice, style, audience, seed))
    draft = Draft.from_caption(caption, topic, style, audience, seed)
    verdicts = _verify_all(handle_for, ledger, draft, "")
    decision = decide(verdicts)
    decision.enforce()
    best = Judged(caption, draft, verdicts, decision,
                  _score(handle_for, ledger, draft, verdicts, ""))
    rounds: list[Round] = []
    while should_refine(best.scores.overall, rounds[-1] if rounds else None, policy):
        n, handle, kept = len(rounds) + 1, handle_for("refine"), best
        refined = ledger.call(f"refine_{n}", handle, lambda: refine(
            handle, kept.draft, critique_for(kept.scores, kept.verdicts)))
        refined = replace(refined, reason=caption.reason)
        draft = kept.draft.with_texts(refined.texts)
        verdicts = _verify_all(handle_for, ledger, draft, f"_{n}")
        decision = decide(verdicts)
        statuses = {name: v.status for name, v in verdicts.items()}
        if decision.refusal is not None:
            rounds.append(Round(n, refined.texts, 0.0, statuses, -kept.scores.overall,
                                decision.refusal))
            continue  # should_refine stops after a refused round
        scores = _score(handle_for, ledger, draft, verdicts, f"_{n}")
        rounds.append(Round(n, refined.texts, scores.overall, statuses,
                            scores.overall - kept.scores.overall))
        if scores.overall > kept.scores.overall:
            best = Judged(refined, draft, verdicts, decision, scores)
    timings = {key: run.ms for key, run in ledger.stages.items()}
    timings["total"] = (time.perf_counter() - began) * 1000
    return PipelineResult(best.caption, best.draft, best.verdicts, best.decision, best.scores,
                          tuple(rounds), dict(ledger.stages), timings)
