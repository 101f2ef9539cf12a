"""The offline writer's scorer and refiner: deterministic text features, documented.

The scorer measures what a meme editor would look at first (length against the slot, whether
the topic shows, a twist or punchline mark, panels that say different things, fresh words) and
maps each to 0..1; the refiner fixes exactly those features (cut filler, shorten, weave in the
topic, style and audience, end on a punchline mark), so a refinement round can measurably gain
and then converge. Same texts, same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

from memesys.offline.text import (
    SHORT_PHRASE_CHARS,
    WORD,
    SlotLine,
    capital,
    clean,
    clip,
    coverage,
    mentions,
    stems,
    unit,
)

# Contrast and twist words: the cheapest proxy for a joke's turn.
CONTRAST = frozenset(
    "but still never finally again instead nobody everyone only somehow "
    "wrong worse actually until even".split()
)
FILLER = frozenset("really very just basically totally quite literally simply".split())
PUNCHLINE = frozenset("!?")
# Fraction of a slot's max chars above which a text reads as crammed.
CRAMMED = 0.7
# Share of creativity that is a deterministic per-text jitter: texts vary with the seed, so
# creativity does too, without letting the jitter dominate.
JITTER = 0.15


@dataclass(frozen=True)
class Features:
    """What the scorer measures on one draft."""

    fills: tuple[float, ...]
    fillers: int
    topic_overlap: float
    style_shown: bool | None
    audience_shown: bool | None
    twist: bool
    punchline: bool
    panel_difference: float
    novelty: float
    distinct: float


def _shown(wanted: str, text: str) -> bool | None:
    """None when nothing was requested, else whether it shows in ``text``."""
    return mentions(wanted, text) if wanted else None


def features(topic: str, slots: list[SlotLine], style: str, audience: str) -> Features:
    texts = [s.text for s in slots]
    tokens = WORD.findall(" ".join(texts).lower())
    written, topical = stems(" ".join(texts)), stems(topic)
    panels = [stems(t) for t in texts]
    overlaps = [len(a & b) / len(a | b) for a, b in combinations(panels, 2) if a | b]
    return Features(
        fills=tuple(len(s.text) / s.max_chars if s.max_chars else 1.0 for s in slots),
        fillers=sum(t in FILLER for t in tokens),
        topic_overlap=coverage(topic, " ".join(texts)),
        style_shown=_shown(style, " ".join(texts)),
        audience_shown=_shown(audience, " ".join(texts)),
        twist=any(t in CONTRAST for t in tokens),
        punchline=any(c in PUNCHLINE for c in "".join(texts)),
        panel_difference=1 - max(overlaps, default=0.0),
        novelty=len(written - topical) / len(written) if written else 0.0,
        distinct=len(set(tokens)) / len(tokens) if tokens else 0.0,
    )


def _fill_score(fill: float) -> float:
    """1.0 for a text using 15-70% of its slot; less when tiny (0 -> 0.7) or crammed
    (100% -> 0.55, over the limit -> lower still)."""
    if fill < 0.15:
        return 0.7 + 2 * fill
    return 1.0 if fill <= CRAMMED else max(0.0, 1.0 - (fill - CRAMMED) * 1.5)


def _bonus(flag: bool | None, yes: float, unrequested: float) -> float:
    return unrequested if flag is None else yes * flag


def _unit_interval(value: float) -> float:
    return round(min(max(value, 0.0), 1.0), 3)


def scores(topic: str, slots: list[SlotLine], style: str, audience: str) -> dict[str, object]:
    """humor, clarity, creativity, shareability in 0..1 and a critique naming the fixes:
    - clarity: mean fill score of the slots, minus 0.05 per filler word;
    - humor: 0.15 + 0.25 twist word + 0.15 punchline mark + 0.25 panel difference + 0.2 style
      shown (0.1 when no style was asked for);
    - shareability: 0.4 topic overlap + 0.25 unused share of the slots' room + 0.2 audience
      shown (0.1 when no audience was asked for);
    - creativity: 0.45 share of words not from the topic + 0.25 distinct-word ratio + up to
      JITTER from a hash of the texts."""
    f = features(topic, slots, style, audience)
    texts = " ".join(s.text for s in slots)
    room = sum(s.max_chars for s in slots) or 1
    values = {
        "humor": 0.15
        + 0.25 * f.twist
        + 0.15 * f.punchline
        + 0.25 * f.panel_difference
        + _bonus(f.style_shown, 0.2, 0.1),
        "clarity": sum(map(_fill_score, f.fills)) / max(len(f.fills), 1) - 0.05 * f.fillers,
        "creativity": 0.45 * f.novelty + 0.25 * f.distinct + JITTER * unit("creativity", texts),
        "shareability": 0.4 * f.topic_overlap
        + 0.25 * max(0.0, 1 - len(texts) / room)
        + _bonus(f.audience_shown, 0.2, 0.1),
    }
    return {
        "critique": critique(topic, slots, style, audience, f),
        **{name: _unit_interval(v) for name, v in values.items()},
    }


def critique(topic: str, slots: list[SlotLine], style: str, audience: str, f: Features) -> str:
    """The fixes the features call for, most important first."""
    fixes = [
        f"shorten {s.name!r} ({len(s.text)}/{s.max_chars} chars)"
        for s, fill in zip(slots, f.fills)
        if fill > CRAMMED
    ]
    if f.fillers:
        fixes.append("cut filler words")
    if f.topic_overlap == 0:
        fixes.append(f"mention the topic ({clean(topic)!r})")
    if f.style_shown is False:
        fixes.append(f"make the {style!r} tone explicit")
    if f.audience_shown is False:
        fixes.append(f"aim it at {audience!r}")
    if not f.twist:
        fixes.append("add a twist (but, still, never)")
    if not f.punchline:
        fixes.append("end on a punchline mark (! or ?)")
    return ("Fix: " + "; ".join(fixes) + ".") if fixes else "Tight and on topic; keep it."


def _drop_fillers(text: str) -> str:
    return " ".join(w for w in text.split() if w.lower().strip(",.!?") not in FILLER) or text


def _roomiest(texts: list[str], slots: list[SlotLine]) -> int:
    """The slot with the most unused chars (first on ties): where a woven-in word fits best."""
    return max(range(len(slots)), key=lambda i: (slots[i].max_chars - len(texts[i]), -i))


def refine(topic: str, slots: list[SlotLine], style: str, audience: str) -> list[str]:
    """Rewrite the texts to fix what the scorer measures. It reads the texts, not the critique
    prose: the critique names these same features. In order: drop filler words, shorten
    crammed texts to CRAMMED of their slot, weave the topic (as a "Topic: ..." prefix, cut to
    SHORT_PHRASE_CHARS), the style (", but <style>") and the audience (" for <audience>") into
    the roomiest slot when missing, then end the last slot on "!" when no text has a punchline
    mark. Every text is clipped to its limit; a text that would vanish is kept as it was."""
    if not slots:
        return []
    texts = [_drop_fillers(s.text) for s in slots]
    texts = [
        clip(t, int(s.max_chars * CRAMMED)) if len(t) > s.max_chars * CRAMMED else t
        for t, s in zip(texts, slots)
    ]
    weaves: tuple[tuple[str, Callable[[str], str]], ...] = (
        (topic, lambda t: f"{capital(clip(clean(topic), SHORT_PHRASE_CHARS))}: {t}"),
        (style, lambda t: f"{t}, but {style}"),
        (audience, lambda t: f"{t} for {audience}"),
    )
    for wanted, weave in weaves:
        if not mentions(wanted, " ".join(texts)):
            i = _roomiest(texts, slots)
            texts[i] = weave(texts[i])
    if not any(c in PUNCHLINE for c in "".join(texts)) and texts[-1][-1:].isalnum():
        texts[-1] += "!"
    return [clip(t, s.max_chars) or s.text for t, s in zip(texts, slots)]
