"""The offline meme writer: what a deterministic stand-in LM answers to each memesys signature.

Used when no API key is configured, through :mod:`memesys.offline.lm` and DSPy's real
adapters, so the daemon runs (and tests exercise the real adapter round trip) with no network.
Select and write (apart, or fused in one answer) live here (caption templates in
:mod:`~memesys.offline.templates`); the judging heuristics live in
:mod:`~memesys.offline.judges` and :mod:`~memesys.offline.critic`.
Same inputs, same answer; the ``seed`` input field varies the choice of format and template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from memesys.domain.formats import CATALOGUE, normalize_name
from memesys.offline import critic, judges
from memesys.offline.templates import DEFAULT_AUDIENCE, TEMPLATES, Template
from memesys.offline.text import (
    SHORT_PHRASE_CHARS,
    SlotLine,
    capital,
    clean,
    clip,
    digest,
    read_slots,
    stems,
)

T = TypeVar("T")


class Unanswerable(ValueError):
    """The prompt asks for something the offline writer cannot answer (the offline LM reports it
    as the provider's invalid-request error, as a model's API would)."""


_CATALOGUE_LINE = re.compile(r"^([a-z0-9][a-z0-9-]*): (.+)$", re.M)
_ARTICLE = re.compile(r"^(?:the|an?)\s+(?=\S)", re.I)


def _seeded(items: Sequence[T], seed: int, *key: object) -> list[T]:
    """``items`` shuffled per ``key`` and rotated by ``seed``: deterministic, looks arbitrary,
    and consecutive seeds start at different items, so seeds reliably vary the output."""
    shuffled = sorted(items, key=lambda item: digest(*key, item))
    start = seed % len(shuffled)
    return shuffled[start:] + shuffled[:start]


@dataclass(frozen=True)
class Match:
    """How well one listed format fits the topic."""

    name: str
    description: str
    score: int
    shared: frozenset[str]


def _match(words: set[str], name: str, description: str) -> Match:
    """Catalogue keywords weigh 3, words of the name 2, words of the description 1."""
    known = CATALOGUE.get(name)
    keywords = stems(" ".join(known.keywords)) if known else set()
    named, described = stems(name.replace("-", " ")), stems(description)
    score = 3 * len(words & keywords) + 2 * len(words & named) + len(words & described)
    return Match(name, description, score, frozenset(words & (keywords | named | described)))


def select_format(topic: str, catalogue: str, seed: int) -> tuple[str, str]:
    """(format name, reason): the listed format that best matches the topic's words, ties
    (including "nothing matches") broken by the seed."""
    listed = _CATALOGUE_LINE.findall(catalogue)
    if not listed:
        raise Unanswerable("the prompt lists no formats")
    topic = clean(topic)
    words = stems(topic)
    matches = {name: _match(words, name, text) for name, text in listed}
    best = max(m.score for m in matches.values())
    tied = [name for name, m in matches.items() if m.score == best]
    chosen = matches[_seeded(tied, seed, topic)[0]]
    why = (
        f"'{topic}' shares {', '.join(sorted(chosen.shared))} with it"
        if chosen.shared
        else f"Nothing matches '{topic}' by keyword; seed {seed} drew it"
    )
    return chosen.name, f"{why}: {chosen.description}"


def _mock(text: str) -> str:
    """aLtErNaTiNg caps over letters only, as the SpongeBob format writes it."""
    out, letters = [], 0
    for char in text:
        if char.isalpha():
            out.append(char.upper() if letters % 2 else char.lower())
            letters += 1
        else:
            out.append(char)
    return "".join(out)


def _words(topic: str, style: str, audience: str) -> dict[str, str]:
    who = audience or DEFAULT_AUDIENCE
    return {
        "topic": topic,
        "Topic": capital(topic),
        "who": who,
        "Who": capital(who),
        "style": style,
        "Style": capital(style),
        "mock": _mock(topic),
    }


def _uses(template: Template, key: str) -> bool:
    return "{" + key + "}" in " ".join(template).lower()


def _pool(templates: tuple[Template, ...], style: str, audience: str) -> list[Template]:
    """Eligible templates that weave in as many of the given style/audience as possible."""
    eligible = [t for t in templates if style or not _uses(t, "style")]
    wanted = [key for key, given in (("style", style), ("who", audience)) if given]
    best = max(sum(_uses(t, key) for key in wanted) for t in eligible)
    return [t for t in eligible if sum(_uses(t, key) for key in wanted) == best]


def _short(phrase: str) -> str:
    """The phrase's leading words within SHORT_PHRASE_CHARS, for templates that overflow."""
    return clip(phrase, SHORT_PHRASE_CHARS)


def write_captions(
    topic: str, format_name: str, slots: list[SlotLine], style: str, audience: str, seed: int
) -> list[str]:
    """One text per slot from the format's templates. The seed picks the first template tried;
    the first that fits every limit wins, retried with shortened topic, style and audience;
    only if none fits is the text clipped."""
    templates = TEMPLATES.get(format_name)
    if templates is None or len(slots) != len(templates[0]):
        raise Unanswerable(f"no templates for {format_name!r} with {len(slots)} slots")
    topic = _ARTICLE.sub("", clean(topic))  # templates supply their own articles
    ordered = _seeded(_pool(templates, style, audience), seed, topic, format_name)
    full, short = _words(topic, style, audience), _words(*map(_short, (topic, style, audience)))
    for words in (full, short):
        for template in ordered:
            texts = [part.format_map(words) for part in template]
            if all(len(text) <= slot.max_chars for text, slot in zip(texts, slots)):
                return texts
    return [clip(part.format_map(short), slot.max_chars) for part, slot in zip(ordered[0], slots)]


def _seed(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


Inputs = dict[str, str]


def _select(inputs: Inputs) -> dict[str, object]:
    name, reason = select_format(
        inputs.get("topic", ""), inputs.get("catalogue", ""), _seed(inputs.get("seed", "0"))
    )
    return {"format_name": name, "reason": reason}


def _write(inputs: Inputs) -> dict[str, object]:
    return {
        "captions": write_captions(
            inputs.get("topic", ""),
            normalize_name(inputs.get("format_name", "")),
            read_slots(inputs.get("slots", "")),
            clean(inputs.get("style", "")),
            clean(inputs.get("audience", "")),
            _seed(inputs.get("seed", "0")),
        )
    }


def _listed_slots(formats: str, name: str) -> str:
    """The slot lines listed under format ``name`` in a SelectAndWrite catalogue (its indented
    lines up to the next format's line)."""
    lines = formats.splitlines()
    heads = [i for i, line in enumerate(lines) if _CATALOGUE_LINE.match(line)]
    for start, end in zip(heads, [*heads[1:], len(lines)]):
        if lines[start].split(":", 1)[0] == name:
            return "\n".join(lines[start + 1 : end])
    raise Unanswerable(f"the prompt lists no format {name!r}")


def _select_write(inputs: Inputs) -> dict[str, object]:
    """Select, then write for the chosen format's listed slots: the same answer as the two
    calls apart."""
    formats = inputs.get("formats", "")
    chosen = _select({**inputs, "catalogue": formats})
    name = str(chosen["format_name"])
    return {
        **chosen,
        **_write({**inputs, "format_name": name, "slots": _listed_slots(formats, name)}),
    }


def _brief(inputs: Inputs) -> tuple[str, list[SlotLine], str, str]:
    """(topic, written slots, style, audience) of a judging prompt."""
    return (
        clean(inputs.get("topic", "")),
        read_slots(inputs.get("slot_texts", "")),
        clean(inputs.get("style", "")),
        clean(inputs.get("audience", "")),
    )


def _judged(reasons_field: str, judgement: judges.Judgement) -> dict[str, object]:
    return {
        reasons_field: judgement.reasons,
        "verdict": judgement.verdict,
        "confidence": judgement.confidence,
    }


def _appropriateness(inputs: Inputs) -> dict[str, object]:
    topic, slots, _, _ = _brief(inputs)
    return _judged("concerns", judges.appropriateness(topic, slots))


def _factuality(inputs: Inputs) -> dict[str, object]:
    topic, slots, _, _ = _brief(inputs)
    return _judged("flagged_claims", judges.factuality(topic, slots))


def _instruction_following(inputs: Inputs) -> dict[str, object]:
    _, slots, style, audience = _brief(inputs)
    return _judged("violations", judges.instruction_following(slots, style, audience))


def _score(inputs: Inputs) -> dict[str, object]:
    return critic.scores(*_brief(inputs))


def _refine(inputs: Inputs) -> dict[str, object]:
    return {"revised_captions": critic.refine(*_brief(inputs))}


# Each memesys signature, recognised by its set of output fields.
_ANSWERS: dict[frozenset[str], Callable[[Inputs], dict[str, object]]] = {
    frozenset({"format_name", "reason"}): _select,
    frozenset({"captions"}): _write,
    frozenset({"format_name", "reason", "captions"}): _select_write,
    frozenset({"concerns", "verdict", "confidence"}): _appropriateness,
    frozenset({"flagged_claims", "verdict", "confidence"}): _factuality,
    frozenset({"violations", "verdict", "confidence"}): _instruction_following,
    frozenset({"critique", "humor", "clarity", "creativity", "shareability"}): _score,
    frozenset({"revised_captions"}): _refine,
}


def answer(outputs: Sequence[str], inputs: dict[str, str]) -> dict[str, object]:
    """The values of ``outputs`` (in their order) for the memesys signature that declares
    exactly those output fields; Unanswerable for any other signature."""
    respond = _ANSWERS.get(frozenset(outputs))
    if respond is None:
        raise Unanswerable(f"cannot produce fields {sorted(outputs)}")
    values = respond(inputs)
    return {name: values[name] for name in outputs}
