"""The draft every judging stage sees: a written meme plus the brief it was written to.

Verifiers, the scorer and the refiner all take a Draft, so they can run alone, in any order or
in parallel, and all render it into their prompts the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from memesys.domain.formats import MemeFormat, get_format
from memesys.pipeline.writing import Caption


@dataclass(frozen=True)
class Draft:
    """``format`` is a catalogue name; ``style``/``audience`` are "" when not requested."""

    topic: str
    format: str
    texts: tuple[str, ...]
    style: str = ""
    audience: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        get_format(self.format)  # UnknownFormat here, not deep inside a judging stage

    @classmethod
    def from_caption(
        cls,
        caption: Caption,
        topic: str,
        style: str | None = None,
        audience: str | None = None,
        seed: int = 0,
    ) -> Draft:
        """The draft of a written caption, with the request's (whitespace-normalized) brief."""
        return cls(
            " ".join(topic.split()),
            caption.format,
            caption.texts,
            " ".join((style or "").split()),
            " ".join((audience or "").split()),
            seed,
        )

    @property
    def meme_format(self) -> MemeFormat:
        return get_format(self.format)

    def with_texts(self, texts: tuple[str, ...]) -> Draft:
        return replace(self, texts=texts)

    def slot_texts(self) -> str:
        """One "N. slot (max C chars): text" line per slot; a missing text is left empty, a text
        beyond the format's slots is listed as "extra" with max 0 chars (it has no place)."""
        slots, texts = self.meme_format.slots, self.texts
        lines = []
        for i in range(max(len(slots), len(texts))):
            name, limit = (slots[i].name, slots[i].max_chars) if i < len(slots) else ("extra", 0)
            text = texts[i] if i < len(texts) else ""
            lines.append(f"{i + 1}. {name} (max {limit} chars): {text}")
        return "\n".join(lines)

    def inputs(self) -> dict[str, Any]:
        """The input fields every judging signature shares."""
        return {
            "topic": self.topic,
            "format_name": self.format,
            "slot_texts": self.slot_texts(),
            "style": self.style,
            "audience": self.audience,
        }
