"""The meme-writing stages: pick a format for a topic and write its slot texts.

Every stage is a signature, so the same program runs on the offline writer and on a real model,
and the model's output is validated against the catalogue before anything is rendered. Two
ways to get there: select then write (choose_format, write_texts: two LM calls, each stage
callable alone with its own model and timing), or both in one call (select_and_write, the
"select_write" stage: the critical path's first call when ``pipeline.fuse_select_write`` is on).
Both validate the slot texts the same way (validate_texts).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import dspy

from memesys.domain.formats import (
    CATALOGUE,
    MemeFormat,
    UnknownFormat,
    get_format,
    slot_problem,
)
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.predict import OutputError, Predictors, run

REQUESTED = "requested"


@dataclass(frozen=True)
class Caption:
    """A validated meme text: ``tokens`` is the LM usage of the calls that produced it (0 if
    the LM reports none)."""

    format: str
    texts: tuple[str, ...]
    reason: str
    tokens: int


class CaptionError(OutputError):
    """The model's output cannot be used: unknown format, wrong slot count, over-long text."""


@functools.cache
def catalogue_text() -> str:
    """The catalogue as SelectFormat sees it: one 'name: description' line per format."""
    return "\n".join(f"{f.name}: {f.description}" for f in CATALOGUE.values())


def slots_text(fmt: MemeFormat) -> str:
    """A format's slots as WriteCaption sees them (the offline writer parses this shape)."""
    return "\n".join(
        f"{i}. {s.name} (max {s.max_chars} chars): {s.hint}" for i, s in enumerate(fmt.slots, 1)
    )


@functools.cache
def formats_text() -> str:
    """The catalogue as SelectAndWrite sees it: each format's 'name: description' line, then its
    slots indented in WriteCaption's shape (the offline writer parses both). The catalogue is
    fixed, so the text is built once."""
    return "\n".join(
        f"{f.name}: {f.description}\n" + _indented(slots_text(f)) for f in CATALOGUE.values()
    )


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def validate_texts(fmt: MemeFormat, captions: Any) -> tuple[str, ...]:
    """The captions as slot texts, or CaptionError naming the first broken rule."""
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CaptionError(f"{fmt.name}: captions must be a list of strings, got {captions!r}")
    names = ", ".join(s.name for s in fmt.slots)
    if len(captions) != len(fmt.slots):
        raise CaptionError(
            f"{fmt.name} needs {len(fmt.slots)} texts ({names}), the model wrote {len(captions)}"
        )
    texts = tuple(" ".join(c.split()) for c in captions)
    for slot, text in zip(fmt.slots, texts):
        problem = slot_problem(slot.name, slot.max_chars, text)
        if problem:
            raise CaptionError(f"{fmt.name}: {problem}: {text!r}")
    return texts


async def _run(
    handle: LMHandle, stage: str, program: Predictors | None, **inputs: Any
) -> tuple[dspy.Prediction, int]:
    """predict.run, with unparseable output reported as the caption error it is for callers."""
    try:
        return await run(handle, stage, program, **inputs)
    except OutputError as exc:
        raise CaptionError(str(exc), exc.tokens) from exc


def clean_topic(topic: str) -> str:
    """The topic with whitespace collapsed; an empty one is refused before any LM call."""
    topic = " ".join(topic.split())
    if not topic:
        raise CaptionError("the topic is empty")
    return topic


@dataclass(frozen=True)
class Choice:
    """The format for a topic, why, and the LM tokens choosing it took (0 when requested)."""

    format: MemeFormat
    reason: str
    tokens: int


def _catalogued(name: str) -> MemeFormat:
    """The catalogue format the model named, or CaptionError."""
    try:
        return get_format(name)
    except UnknownFormat:
        raise CaptionError(f"the model chose {name!r}, which is not in the catalogue") from None


async def choose_format(
    handle: LMHandle, topic: str, seed: int = 0, program: Predictors | None = None
) -> Choice:
    """The "select" stage (``program``'s select predictor, the built-in one by default): the
    model's pick, which must name a catalogue format."""
    chosen, tokens = await _run(
        handle, "select", program, topic=clean_topic(topic), catalogue=catalogue_text(), seed=seed
    )
    return Choice(_catalogued(chosen.format_name), " ".join(chosen.reason.split()), tokens)


def requested(format: str) -> Choice:
    """A caller-named format: UnknownFormat before any LM call, no tokens spent."""
    return Choice(get_format(format), REQUESTED, 0)


async def write_texts(
    handle: LMHandle,
    topic: str,
    choice: Choice,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    program: Predictors | None = None,
) -> Caption:
    """The "write" stage (``program``'s write predictor): the slot texts for the chosen format.
    ``tokens`` counts this call only."""
    fmt = choice.format
    written, tokens = await _run(
        handle,
        "write",
        program,
        topic=clean_topic(topic),
        format_name=fmt.name,
        slots=slots_text(fmt),
        style=style or "",
        audience=audience or "",
        seed=seed,
    )
    return Caption(
        format=fmt.name,
        texts=validate_texts(fmt, written.captions),
        reason=choice.reason,
        tokens=tokens,
    )


async def select_and_write(
    handle: LMHandle,
    topic: str,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    program: Predictors | None = None,
) -> Caption:
    """The "select_write" stage (``program``'s select_write predictor): the format, why, and
    its slot texts in one LM call, validated as choose_format and write_texts validate them
    (CaptionError on an unknown format or texts that do not fit its slots)."""
    written, tokens = await _run(
        handle,
        "select_write",
        program,
        topic=clean_topic(topic),
        formats=formats_text(),
        style=style or "",
        audience=audience or "",
        seed=seed,
    )
    fmt = _catalogued(written.format_name)
    return Caption(
        format=fmt.name,
        texts=validate_texts(fmt, written.captions),
        reason=" ".join(written.reason.split()),
        tokens=tokens,
    )


async def write_caption(
    handle: LMHandle,
    topic: str,
    format: str | None = None,
    style: str | None = None,
    audience: str | None = None,
    seed: int = 0,
    program: Predictors | None = None,
) -> Caption:
    """Select (skipped when the caller names a format) then write, both on ``handle`` with
    ``program``'s predictors.

    A requested unknown format raises UnknownFormat before any LM call; bad model output raises
    CaptionError; a failed LM call raises DSPy's LMError. ``tokens`` counts both stages.
    """
    topic = clean_topic(topic)
    choice = requested(format) if format else await choose_format(handle, topic, seed, program)
    caption = await write_texts(handle, topic, choice, style, audience, seed, program)
    return replace(caption, tokens=caption.tokens + choice.tokens)
