"""Every DSPy signature of the meme program: what each stage's predictor is asked, and answers.

The bottom of the pipeline: it knows nothing of the stages that run these signatures
(``writing``, ``verification``, ``scoring``, ``refinement``) nor of the program that holds one
predictor per signature (``program``). The signatures' docstrings and field descriptions are
the prompts, and part of the program's hash (a changed word is another program).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import dspy


class SelectFormat(dspy.Signature):  # type: ignore[misc]  # DSPy is untyped
    """Pick the meme format whose joke structure best fits the topic."""

    topic: str = dspy.InputField(desc="what the meme is about")
    catalogue: str = dspy.InputField(desc="one format per line as 'name: when it fits'")
    seed: int = dspy.InputField(desc="variation key: another seed may pick another good fit")
    format_name: str = dspy.OutputField(desc="exactly one name from the catalogue")
    reason: str = dspy.OutputField(desc="one sentence on why it fits the topic")


class WriteCaption(dspy.Signature):  # type: ignore[misc]  # DSPy is untyped
    """Write the meme's text, one short punchy text per slot, about the topic, in slot order,
    each within its max chars."""

    topic: str = dspy.InputField(desc="what the meme is about")
    format_name: str = dspy.InputField(desc="the meme format")
    slots: str = dspy.InputField(desc="numbered slots: name (max chars): what belongs there")
    style: str = dspy.InputField(desc="tone to write in; empty means any")
    audience: str = dspy.InputField(desc="who the meme is for; empty means anyone")
    seed: int = dspy.InputField(desc="variation key: another seed should give other captions")
    captions: list[str] = dspy.OutputField(desc="one text per slot, in slot order")


class SelectAndWrite(dspy.Signature):  # type: ignore[misc]  # DSPy is untyped
    """Pick the meme format whose joke structure best fits the topic, then write its text: one
    short punchy text per slot of that format, about the topic, in slot order, each within its
    max chars."""

    topic: str = dspy.InputField(desc="what the meme is about")
    formats: str = dspy.InputField(
        desc="each format as 'name: when it fits', then its numbered slots: "
        "name (max chars): what belongs there"
    )
    style: str = dspy.InputField(desc="tone to write in; empty means any")
    audience: str = dspy.InputField(desc="who the meme is for; empty means anyone")
    seed: int = dspy.InputField(desc="variation key: another seed may pick another good fit")
    format_name: str = dspy.OutputField(desc="exactly one name from the formats")
    reason: str = dspy.OutputField(desc="one sentence on why it fits the topic")
    captions: list[str] = dspy.OutputField(desc="one text per slot of that format, in slot order")


class DraftInputs(dspy.Signature):  # type: ignore[misc]  # DSPy is untyped
    """The inputs every judging signature (verifiers, scorer, refiner) reads."""

    topic: str = dspy.InputField(desc="what the meme is about")
    format_name: str = dspy.InputField(desc="the meme format")
    slot_texts: str = dspy.InputField(desc="numbered slots: name (max chars): the text written")
    style: str = dspy.InputField(desc="requested tone; empty means any")
    audience: str = dspy.InputField(desc="who the meme is for; empty means anyone")


class CheckAppropriateness(DraftInputs):
    """Decide whether this meme is safe to publish. Fail it for hate speech or slurs,
    harassment or threats, sexual content, violence, or private data about real people
    (email addresses, phone numbers, street addresses, ID numbers), whether in the topic or in
    any text. Edgy but harmless humour passes."""

    concerns: list[str] = dspy.OutputField(
        desc="each problem found, naming the category and quoting the words; empty if none"
    )
    verdict: Literal["passed", "failed"] = dspy.OutputField(desc="failed if there is any concern")
    confidence: float = dspy.OutputField(desc="0 to 1: how sure the verdict is")


class CheckFactuality(DraftInputs):
    """Check the meme's claims about real people, events and numbers. Obvious jokes and
    exaggeration are fine; fail statements a reader could take as fact that are false or
    unverifiable, such as quotes attributed to real people, dates and statistics."""

    flagged_claims: list[str] = dspy.OutputField(
        desc="each doubtful claim quoted, with why it is doubtful; empty if none"
    )
    verdict: Literal["passed", "failed"] = dspy.OutputField(
        desc="failed if a flagged claim could mislead"
    )
    confidence: float = dspy.OutputField(desc="0 to 1: how sure the verdict is")


class CheckInstructions(DraftInputs):
    """Check the meme follows its brief: the format's joke structure with one text per slot,
    each text within its max chars, the requested style and the requested audience (when
    given)."""

    violations: list[str] = dspy.OutputField(desc="each instruction not followed; empty if none")
    verdict: Literal["passed", "failed"] = dspy.OutputField(desc="failed if any violation")
    confidence: float = dspy.OutputField(desc="0 to 1: how sure the verdict is")


class ScoreMeme(DraftInputs):
    """Rate this meme as a demanding meme editor would, each dimension from 0 (bad) to 1
    (excellent): humor (is it funny, does it have a turn), clarity (instantly readable, short
    texts), creativity (fresh, not the obvious joke) and shareability (would the audience send
    it on). Critique it first: the biggest weakness and how to fix it."""

    critique: str = dspy.OutputField(desc="one or two sentences: what to fix, concretely")
    humor: float = dspy.OutputField(desc="0 to 1")
    clarity: float = dspy.OutputField(desc="0 to 1")
    creativity: float = dspy.OutputField(desc="0 to 1")
    shareability: float = dspy.OutputField(desc="0 to 1")


class RefineCaption(DraftInputs):
    """Rewrite the meme's texts to fix the critique: the same format, one text per slot in slot
    order, each within its max chars. Keep what works; make it shorter, sharper and funnier;
    keep the topic, the requested style and audience; drop any claim the critique flags."""

    slots: str = dspy.InputField(desc="numbered slots: name (max chars): what belongs there")
    critique: str = dspy.InputField(desc="what the verifiers and the scorer want fixed")
    revised_captions: list[str] = dspy.OutputField(desc="one text per slot, in slot order")


# Each stage's signature, by the name the pipeline, the program's predictors and the saved
# state use.
SIGNATURES: Mapping[str, type[dspy.Signature]] = MappingProxyType(
    {
        "select": SelectFormat,
        "write": WriteCaption,
        "select_write": SelectAndWrite,
        "appropriateness": CheckAppropriateness,
        "factuality": CheckFactuality,
        "instruction_following": CheckInstructions,
        "score": ScoreMeme,
        "refine": RefineCaption,
    }
)
STAGES = tuple(SIGNATURES)
