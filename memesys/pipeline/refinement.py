"""Refine a draft from its critique, and the loop policy that decides whether to try again.

The rewrite is a signature validated exactly like the first caption (same format, one text per
slot, within limits). The policy is a pure function on recorded rounds, so the sequential
pipeline and the parallel actors stop refining for the same reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from memesys.config import PipelineConfig
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import OutputError, Predictors, run
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import FAILED, VERIFIERS, Verdict
from memesys.pipeline.writing import Caption, CaptionError, slots_text, validate_texts

REFINED = "refined"
LATE = "late"
"""Why a wanted round did not run: the meme was already older than ``RefinePolicy.within_s``."""


async def refine(
    handle: LMHandle, draft: Draft, critique: str, program: Predictors | None = None
) -> Caption:
    """The rewritten caption (reason REFINED) from ``program``'s refine predictor (the built-in
    one by default); CaptionError on unusable output, DSPy's LMError on a failed LM call."""
    fmt = draft.meme_format
    try:
        revised, tokens = await run(
            handle, "refine", program, **draft.inputs(), slots=slots_text(fmt), critique=critique
        )
    except OutputError as exc:
        raise CaptionError(str(exc), exc.tokens) from exc
    return Caption(
        format=fmt.name,
        texts=validate_texts(fmt, revised.revised_captions),
        reason=REFINED,
        tokens=tokens,
    )


def critique_for(scores: Scores, verdicts: Mapping[str, Verdict]) -> str:
    """What the refiner is asked to fix: every failed verdict's reasons, then the scorer's
    critique."""
    lines = [
        f"{v.verifier} failed: {'; '.join(v.reasons)}"
        for name in VERIFIERS
        if (v := verdicts.get(name)) and v.status == FAILED
    ]
    return "\n".join([*lines, scores.critique])


@dataclass(frozen=True)
class RefinePolicy:
    """Refine while overall < threshold and fewer than max_rounds were made; stop as soon as a
    round gains less than min_gain (or was refused). A round starts only while the meme is
    younger than within_s seconds: against a slow provider a round adds two LM latencies (the
    rewrite, then judging again), so a meme that is already late ships its best draft."""

    threshold: float = 0.55
    max_rounds: int = 2
    min_gain: float = 0.02
    within_s: float = math.inf

    @classmethod
    def from_config(cls, pipeline: PipelineConfig) -> RefinePolicy:
        """From the [pipeline] section: refine_threshold, max_refine_rounds, min_refine_gain,
        refine_within_s."""
        return cls(
            pipeline.refine_threshold,
            pipeline.max_refine_rounds,
            pipeline.min_refine_gain,
            pipeline.refine_within_s,
        )


@dataclass(frozen=True)
class Round:
    """One refinement round (index from 1): the texts it wrote, their adjusted overall, each
    verifier's status, the gain over the draft it refined, and the refusal code when its
    verdicts ruled it out (then it scores 0 and is never kept)."""

    index: int
    texts: tuple[str, ...]
    overall: float
    verdicts: Mapping[str, str]
    gain: float
    refused: str | None = None


def should_refine(overall: float, last: Round | None, policy: RefinePolicy) -> bool:
    """Whether to run another round, given the best overall so far and the last round (None
    before the first)."""
    if overall >= policy.threshold:
        return False
    if last is None:
        return policy.max_rounds > 0
    return last.index < policy.max_rounds and last.refused is None and last.gain >= policy.min_gain
