"""The meme-writing DSPy program: pick a format for a topic, then write its slot texts.

Every stage is a signature, so the same program runs on the offline writer and on a real model,
and the model's output is validated against the catalogue before anything is rendered.
"""
from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import dspy  # noqa: E402
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

from memesys.formats import CATALOGUE, MemeFormat, UnknownFormat, get_format  # noqa: E402
from memesys.lm import LMHandle  # noqa: E402

REQUESTED = "requested"


class SelectFormat(dspy.Signature):
    """Pick the meme format whose joke structure best fits the topic."""

    topic: str = dspy.InputField(desc="what the meme is about")
    catalogue: str = dspy.InputField(desc="one format per line as 'name: when it fits'")
    seed: int = dspy.InputField(desc="variation key: another seed may pick another good fit")
    format_name: str = dspy.OutputField(desc="exactly one name from the catalogue")
    reason: str = dspy.OutputField(desc="one sentence on why it fits the topic")


class WriteCaption(dspy.Signature):
    """Write the meme's text, one short punchy text per slot, about the topic, in slot order,
    each within its max chars."""

    topic: str = dspy.InputField(desc="what the meme is about")
    format_name: str = dspy.InputField(desc="the meme format")
    slots: str = dspy.InputField(desc="numbered slots: name (max chars): what belongs there")
    style: str = dspy.InputField(desc="tone to write in; empty means any")
    audience: str = dspy.InputField(desc="who the meme is for; empty means anyone")
    seed: int = dspy.InputField(desc="variation key: another seed should give other captions")
    captions: list[str] = dspy.OutputField(desc="one text per slot, in slot order")


@dataclass(frozen=True)
class Caption:
    """A validated meme text: ``tokens`` is the LM usage of every stage call (0 if unreported)."""

    format: str
    texts: tuple[str, ...]
    reason: str
    tokens: int


class CaptionError(ValueError):
    """The model's output cannot be used: unknown format, wrong slot count, over-long text."""


def catalogue_text() -> str:
    """The catalogue as SelectFormat sees it: one 'name: description' line per format."""
    return "\n".join(f"{f.name}: {f.description}" for f in CATALOGUE.values())


def slots_text(fmt: MemeFormat) -> str:
    """A format's slots as WriteCaption sees them (the offline writer parses this shape)."""
    return "\n".join(f"{i}. {s.name} (max {s.max_chars} chars): {s.hint}"
                     for i, s in enumerate(fmt.slots, 1))


def _predict(predictor: dspy.Predict, **inputs: Any) -> dspy.Prediction:
    """Run one stage; output no adapter could parse is a caption error, like any bad output."""
    try:
        return predictor(**inputs)
    except AdapterParseError as exc:
        raise CaptionError(f"unparseable model output: {exc}") from exc


def validate_texts(fmt: MemeFormat, captions: Any) -> tuple[str, ...]:
    """The captions as slot texts, or CaptionError naming the first broken rule."""
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CaptionError(f"{fmt.name}: captions must be a list of strings, got {captions!r}")
    names = ", ".join(s.name for s in fmt.slots)
    if len(captions) != len(fmt.slots):
        raise CaptionError(
            f"{fmt.name} needs {len(fmt.slots)} texts ({names}), the model wrote {len(captions)}")
    texts = tuple(" ".join(c.split()) for c in captions)
    for slot, text in zip(fmt.slots, texts):
        if not text:
            raise CaptionError(f"{fmt.name}: slot {slot.name!r} is empty")
        if len(text) > slot.max_chars:
            raise CaptionError(f"{fmt.name}: slot {slot.name!r} has {len(text)} chars, "
                               f"max {slot.max_chars}: {text!r}")
    return texts


def total_tokens(usage: dict[str, dict[str, Any]]) -> int:
    """Sum DSPy's per-LM usage totals; an LM that reports none counts 0."""
    def one(entry: dict[str, Any]) -> int:
        total = entry.get("total_tokens")
        if total is None:
            total = (entry.get("prompt_tokens") or 0) + (entry.get("completion_tokens") or 0)
        return int(total)
    return sum(one(entry) for entry in usage.values())


class MemeProgram(dspy.Module):
    """SelectFormat (skipped when the caller names a format), then WriteCaption."""

    def __init__(self) -> None:
        super().__init__()
        self.select = dspy.Predict(SelectFormat)
        self.write = dspy.Predict(WriteCaption)

    def choose(self, topic: str, seed: int) -> tuple[MemeFormat, str]:
        """The model's format choice, which must name a catalogue format."""
        chosen = _predict(self.select, topic=topic, catalogue=catalogue_text(), seed=seed)
        try:
            return get_format(chosen.format_name), " ".join(chosen.reason.split())
        except UnknownFormat:
            raise CaptionError(
                f"the model chose {chosen.format_name!r}, which is not in the catalogue") from None

    def forward(self, topic: str, format: str | None = None, style: str | None = None,
                audience: str | None = None, seed: int = 0) -> Caption:
        """A requested unknown format raises UnknownFormat before any LM call; bad model
        output raises CaptionError."""
        topic = " ".join(topic.split())
        if not topic:
            raise CaptionError("the topic is empty")
        requested = get_format(format) if format else None
        # A nested tracker: usage also rolls up into any tracker the caller opened.
        with dspy.track_usage() as tracker:
            fmt, reason = (requested, REQUESTED) if requested else self.choose(topic, seed)
            written = _predict(self.write, topic=topic, format_name=fmt.name,
                               slots=slots_text(fmt), style=style or "",
                               audience=audience or "", seed=seed)
        return Caption(format=fmt.name, texts=validate_texts(fmt, written.captions),
                       reason=reason, tokens=total_tokens(tracker.get_total_tokens()))


def write_caption(handle: LMHandle, topic: str, format: str | None = None,
                  style: str | None = None, audience: str | None = None,
                  seed: int = 0) -> Caption:
    """Run the program on ``handle``'s LM. dspy.context scopes the LM to this thread/task, so
    concurrent workers with different LMs never see each other's settings; a fresh program per
    call keeps them from sharing module state."""
    with dspy.context(lm=handle.lm):
        return MemeProgram()(topic=topic, format=format, style=style, audience=audience,
                             seed=seed)
