"""Score a draft (humor, clarity, creativity, shareability) and apply the verifiers' verdicts.

The model rates the four dimensions; ``overall`` is computed here, as a documented weighted
mean, so the ranking rule is ours and not the model's arithmetic. apply_verdicts is the one
place the verification outcome changes the score, a pure function the sequential pipeline and
the parallel actors share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import OutputError, Predictors, run
from memesys.pipeline.verification import FAILED, Verdict

DIMENSIONS = ("humor", "clarity", "creativity", "shareability")
# Humor is what a meme is for; clarity next (a joke nobody parses is no joke); creativity and
# shareability share the rest.
WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"humor": 0.35, "clarity": 0.25, "creativity": 0.2, "shareability": 0.2}
)
# A failed factuality verdict keeps (1 - confidence * FACTUALITY_PENALTY) of the overall: a
# certain falsehood halves it, a faint doubt barely moves it.
FACTUALITY_PENALTY = 0.5
# A failed instruction-following verdict keeps this share of the overall.
INSTRUCTION_FACTOR = 0.5


@dataclass(frozen=True)
class Scores:
    """Each dimension in 0..1; ``overall`` is their WEIGHTS mean (after apply_verdicts: the
    adjusted value)."""

    humor: float
    clarity: float
    creativity: float
    shareability: float
    overall: float
    critique: str
    tokens: int


def weighted(values: Mapping[str, float], weights: Mapping[str, float] = WEIGHTS) -> float:
    """The weighted mean of the dimensions (weights need not sum to 1)."""
    return sum(weights[d] * values[d] for d in DIMENSIONS) / sum(weights[d] for d in DIMENSIONS)


async def score(handle: LMHandle, draft: Draft, program: Predictors | None = None) -> Scores:
    """Rate ``draft`` on ``handle`` with ``program``'s score predictor (the built-in one by
    default). Ratings are clamped to 0..1; a non-numeric rating raises OutputError, a failed LM
    call DSPy's LMError."""
    prediction, tokens = await run(handle, "score", program, **draft.inputs())
    values = {}
    for dimension in DIMENSIONS:
        value = getattr(prediction, dimension)
        if not isinstance(value, float) or math.isnan(value):
            raise OutputError(f"score: {dimension} {value!r} is not a number", tokens)
        values[dimension] = min(max(value, 0.0), 1.0)
    return Scores(
        **values,
        overall=weighted(values),
        critique=" ".join(str(prediction.critique).split()),
        tokens=tokens,
    )


def apply_verdicts(scores: Scores, verdicts: Mapping[str, Verdict]) -> Scores:
    """The overall the verdicts leave: a failed appropriateness zeroes it, a failed factuality
    multiplies it by (1 - confidence * FACTUALITY_PENALTY), a failed instruction-following by
    INSTRUCTION_FACTOR. Passed, unavailable and missing verdicts leave it as it is (the
    decision, not the score, handles unavailability)."""

    def failed(verifier: str) -> Verdict | None:
        verdict = verdicts.get(verifier)
        return verdict if verdict is not None and verdict.status == FAILED else None

    overall = scores.overall
    if failed("appropriateness"):
        overall = 0.0
    if factual := failed("factuality"):
        overall *= 1 - factual.confidence * FACTUALITY_PENALTY
    if failed("instruction_following"):
        overall *= INSTRUCTION_FACTOR
    return replace(scores, overall=overall)
