"""The three verifiers: is the meme appropriate, factual, and does it follow its brief?

Each is a DSPy signature, so the offline writer and a real model judge through the same prompt
and parser. The model's answer is never trusted further than it must be:
- output that cannot be parsed (or is empty, or has a non-numeric confidence) is a FAILED
  verdict, never a pass: a verifier that cannot say "passed" clearly has not passed the meme;
- slot lengths and counts are measured here in Python and combined with the model's verdict
  (either failing fails), because a model's reading of "max 40 chars" is not a measurement;
- a failed LM call raises DSPy's LMError, so only the caller can turn it into "unavailable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dspy

from memesys.domain.formats import slot_problem
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import OutputError, Predictors, run

VERIFIERS = ("appropriateness", "factuality", "instruction_following")
PASSED, FAILED, UNAVAILABLE = "passed", "failed", "unavailable"


# Each verifier's output field listing its reasons (its signature is the program's predictor
# of the same name, memesys.pipeline.signatures).
_REASONS: dict[str, str] = {
    "appropriateness": "concerns",
    "factuality": "flagged_claims",
    "instruction_following": "violations",
}


@dataclass(frozen=True)
class Verdict:
    """One verifier's judgement; ``confidence`` is how sure the status is (0..1)."""

    verifier: str
    status: str
    confidence: float
    reasons: tuple[str, ...]
    tokens: int

    @classmethod
    def unavailable(cls, verifier: str, why: str) -> Verdict:
        """The verdict a caller records when the verifier's LM call failed. Only the first line
        of ``why`` is kept: provider errors append multi-line advice."""
        return cls(verifier, UNAVAILABLE, 0.0, (why.strip().split("\n", 1)[0],), 0)


def measure(draft: Draft) -> tuple[str, ...]:
    """The draft's measurable instruction violations: slot count, empty and over-long texts."""
    slots, texts = draft.meme_format.slots, draft.texts
    problems = []
    if len(texts) != len(slots):
        problems.append(f"{draft.format} has {len(slots)} slots, the draft has {len(texts)} texts")
    for slot, text in zip(slots, texts):
        problem = slot_problem(slot.name, slot.max_chars, text)
        if problem:
            problems.append(problem)
    return tuple(problems)


def _unusable(verifier: str, why: str, tokens: int) -> Verdict:
    """Fail closed: an answer the verifier cannot stand behind is a certain failure."""
    return Verdict(verifier, FAILED, 1.0, (f"unusable verifier output: {why}",), tokens)


def _read(verifier: str, prediction: dspy.Prediction, reasons_field: str, tokens: int) -> Verdict:
    """The model's verdict, or a failed one when its confidence is not a number."""
    confidence = prediction.confidence
    if not isinstance(confidence, float) or math.isnan(confidence):
        return _unusable(verifier, f"confidence {confidence!r} is not a number", tokens)
    reasons = tuple(" ".join(r.split()) for r in getattr(prediction, reasons_field) or ())
    return Verdict(
        verifier,
        prediction.verdict,
        min(max(confidence, 0.0), 1.0),
        tuple(r for r in reasons if r),
        tokens,
    )


def _with_measurements(verdict: Verdict, measured: tuple[str, ...]) -> Verdict:
    """A measured violation fails the verdict with certainty, whatever the model said."""
    if not measured:
        return verdict
    others = tuple(r for r in verdict.reasons if r not in measured)
    return Verdict(verdict.verifier, FAILED, 1.0, measured + others, verdict.tokens)


async def verify(
    handle: LMHandle, verifier: str, draft: Draft, program: Predictors | None = None
) -> Verdict:
    """Run one verifier (``program``'s predictor of that name, the built-in one by default) on
    ``handle``. Status is "passed" or "failed" (unusable output fails, closed); a failed LM call
    raises DSPy's LMError (LMTimeoutError, LMRateLimitError, ...)."""
    if verifier not in _REASONS:
        raise ValueError(f"unknown verifier {verifier!r}; known: {', '.join(VERIFIERS)}")
    reasons_field = _REASONS[verifier]
    try:
        prediction, tokens = await run(handle, verifier, program, **draft.inputs())
    except OutputError as exc:
        verdict = _unusable(verifier, str(exc), exc.tokens)
    else:
        verdict = _read(verifier, prediction, reasons_field, tokens)
    if verifier == "instruction_following":
        verdict = _with_measurements(verdict, measure(draft))
    return verdict
