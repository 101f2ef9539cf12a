"""The meme format catalogue: what each classic template means and which text slots it has.

The catalogue is the single source of truth shared by the LM prompts (names, descriptions,
slot hints and limits), the validator of LM output and the renderer (layout, slot order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

LAYOUTS = ("top_bottom", "two_panel", "labels", "multi_panel")

# Slot counts each layout's renderer can draw; checked here so a bad entry fails at import.
SLOT_COUNTS: Mapping[str, range] = MappingProxyType(
    {
        "top_bottom": range(2, 3),
        "two_panel": range(2, 5),
        "labels": range(2, 5),
        "multi_panel": range(3, 7),
    }
)

LABEL = 40
PANEL = 70
STEP = 60
CAPTION = 80


@dataclass(frozen=True)
class Slot:
    """One piece of text on the image; ``hint`` tells the writer what belongs there."""

    name: str
    max_chars: int
    hint: str


@dataclass(frozen=True)
class MemeFormat:
    """A meme template: ``description`` says when the joke structure fits a topic."""

    name: str
    title: str
    description: str
    layout: str
    slots: tuple[Slot, ...]
    keywords: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.layout not in SLOT_COUNTS:
            raise ValueError(f"{self.name}: unknown layout {self.layout!r}")
        if len(self.slots) not in SLOT_COUNTS[self.layout]:
            raise ValueError(f"{self.name}: {self.layout} cannot hold {len(self.slots)} slots")
        if self.layout == "top_bottom" and [s.name for s in self.slots] != ["top", "bottom"]:
            raise ValueError(f"{self.name}: top_bottom slots must be named top, bottom")


def slot_problem(name: str, max_chars: int, text: str) -> str | None:
    """The measured rule for one slot's text, the same for the writer's output validation, the
    instruction-following verifier and the offline judge: not empty, at most ``max_chars``."""
    if not text.strip():
        return f"slot {name!r} is empty"
    if len(text) > max_chars:
        return f"slot {name!r} has {len(text)} chars, max {max_chars}"
    return None


class UnknownFormat(KeyError):
    """A format name that is not in the catalogue."""


def _fmt(
    name: str,
    title: str,
    description: str,
    layout: str,
    slots: tuple[tuple[str, int, str], ...],
    keywords: str,
) -> MemeFormat:
    return MemeFormat(
        name,
        title,
        description,
        layout,
        tuple(Slot(*spec) for spec in slots),
        tuple(keywords.split()),
    )


_FORMATS = (
    _fmt(
        "drake",
        "Drake Hotline Bling",
        "Drake rejects one thing and approves another: any preference or 'this, not that'.",
        "two_panel",
        (
            ("reject", PANEL, "the thing Drake waves away"),
            ("prefer", PANEL, "the thing Drake approves of"),
        ),
        "prefer instead better rather choice versus vs over alternative upgrade favorite "
        "option like hate",
    ),
    _fmt(
        "distracted-boyfriend",
        "Distracted Boyfriend",
        "Someone turns away from their commitment to ogle something new and shiny.",
        "labels",
        (
            ("boyfriend", LABEL, "who is getting distracted"),
            ("girlfriend", LABEL, "the commitment being neglected"),
            ("other_woman", LABEL, "the new temptation"),
        ),
        "new temptation distracted shiny switch tempted attention commitment cheat hype "
        "trend framework procrastination",
    ),
    _fmt(
        "expanding-brain",
        "Expanding Brain",
        "Four ideas that sound ever more enlightened and get ever more absurd.",
        "multi_panel",
        (
            ("level_1", STEP, "the most basic take"),
            ("level_2", STEP, "a smarter-sounding take"),
            ("level_3", STEP, "an overthought take"),
            ("level_4", STEP, "the absurd 'enlightened' take"),
        ),
        "smart genius idea enlightened level galaxy brain overthinking evolution ascend clever big",
    ),
    _fmt(
        "change-my-mind",
        "Change My Mind",
        "A confident hot take on a sign, daring anyone to argue.",
        "top_bottom",
        (
            ("top", CAPTION, "the hot take written on the sign"),
            ("bottom", LABEL, "the dare, usually 'Change my mind'"),
        ),
        "opinion take hot unpopular controversial debate argue prove wrong believe "
        "overrated underrated",
    ),
    _fmt(
        "two-buttons",
        "Two Buttons",
        "Someone sweats over choosing between two conflicting options.",
        "labels",
        (
            ("left_button", LABEL, "the first option"),
            ("right_button", LABEL, "the conflicting second option"),
            ("person", LABEL, "who is sweating over the choice"),
        ),
        "choice decide dilemma choose both either conflict sweat decision torn options",
    ),
    _fmt(
        "is-this-a-pigeon",
        "Is This a Pigeon?",
        "Someone confidently misidentifies something: confusion, jargon, newbie mistakes.",
        "labels",
        (
            ("person", LABEL, "who is confused"),
            ("butterfly", LABEL, "the thing being misidentified"),
            ("question", STEP, "'Is this a ...?' with the wrong label"),
        ),
        "confused misunderstand wrong mistake identify label clueless beginner newbie "
        "jargon actually",
    ),
    _fmt(
        "one-does-not-simply",
        "One Does Not Simply",
        "Boromir warns that a task people treat as easy is actually hard.",
        "top_bottom",
        (
            ("top", STEP, "usually 'One does not simply'"),
            ("bottom", CAPTION, "the deceptively hard task"),
        ),
        "hard difficult simply impossible easy task just quit stop walk challenge",
    ),
    _fmt(
        "success-kid",
        "Success Kid",
        "A small, smug victory: something finally went right.",
        "top_bottom",
        (("top", CAPTION, "the setup"), ("bottom", CAPTION, "the small victory")),
        "win success victory finally worked achievement lucky proud passed first try fixed",
    ),
    _fmt(
        "bad-luck-brian",
        "Bad Luck Brian",
        "An innocent attempt that goes comically, predictably wrong.",
        "top_bottom",
        (
            ("top", CAPTION, "an innocent attempt"),
            ("bottom", CAPTION, "how it goes horribly wrong"),
        ),
        "unlucky fail bad luck wrong broke crash misfortune worst lost fired",
    ),
    _fmt(
        "this-is-fine",
        "This Is Fine",
        "Calm denial while everything is on fire: outages, deadlines, chaos.",
        "top_bottom",
        (
            ("top", CAPTION, "the situation that is on fire"),
            ("bottom", STEP, "the calm denial, e.g. 'This is fine'"),
        ),
        "fire burning chaos denial fine calm broken production outage deadline crisis "
        "everything bug",
    ),
    _fmt(
        "woman-yelling-at-cat",
        "Woman Yelling at Cat",
        "An angry accusation met by a smug, unbothered reply.",
        "labels",
        (("woman", STEP, "the angry accusation"), ("cat", STEP, "the smug, unbothered reply")),
        "angry yelling argument accuse blame fight smug reply cat complain shout",
    ),
    _fmt(
        "surprised-pikachu",
        "Surprised Pikachu",
        "Someone acts, meets the obvious consequence and is shocked anyway.",
        "multi_panel",
        (
            ("action", STEP, "what someone does"),
            ("consequence", STEP, "the entirely predictable result"),
            ("reaction", LABEL, "the fake-shocked reaction"),
        ),
        "surprised shock predictable consequence obvious expected result shocked shocking "
        "pikachu cause",
    ),
    _fmt(
        "gru-plan",
        "Gru's Plan",
        "A four-step plan whose third step reveals the flaw, noticed in the fourth.",
        "multi_panel",
        (
            ("step_1", 50, "the plan's first step"),
            ("step_2", 50, "the plan's second step"),
            ("step_3", 50, "the unexpected flaw"),
            ("step_4", 50, "the same flaw again, now noticed"),
        ),
        "plan scheme steps flaw backfire strategy oops mistake project roadmap",
    ),
    _fmt(
        "uno-draw-25",
        "UNO Draw 25",
        "Someone would rather draw 25 cards than do one simple, reasonable thing.",
        "labels",
        (
            ("card", STEP, "'Do X or draw 25': the thing they refuse"),
            ("player", LABEL, "who draws 25 instead"),
        ),
        "refuse stubborn never avoid rather draw uno admit apologize update",
    ),
    _fmt(
        "left-exit-12",
        "Left Exit 12 Off Ramp",
        "A car swerves off the sensible road for a tempting exit.",
        "labels",
        (
            ("straight", LABEL, "the sensible road ahead"),
            ("exit", LABEL, "the tempting exit"),
            ("car", LABEL, "who swerves for the exit"),
        ),
        "swerve exit road detour sensible impulse instead tempt last minute abandon",
    ),
    _fmt(
        "running-away-balloon",
        "Running Away Balloon",
        "Someone reaches for a goal drifting away while something holds them back.",
        "labels",
        (
            ("person", LABEL, "who is reaching"),
            ("balloon", LABEL, "the goal drifting away"),
            ("holder", LABEL, "what holds them back"),
        ),
        "goal dream away holding back obstacle chase reach miss escape distraction balloon",
    ),
    _fmt(
        "disaster-girl",
        "Disaster Girl",
        "A smug culprit smiles in front of the disaster they caused.",
        "top_bottom",
        (
            ("top", CAPTION, "the disaster in the background"),
            ("bottom", CAPTION, "the smug culprit's line"),
        ),
        "disaster fire chaos revenge destroy smug caused culprit evil burn sabotage",
    ),
    _fmt(
        "roll-safe",
        "Roll Safe",
        "Tapping the temple over flawless bad logic: 'can't X if you Y'.",
        "top_bottom",
        (("top", CAPTION, "the 'Can't X...' setup"), ("bottom", CAPTION, "the flawless bad logic")),
        "logic smart think clever loophole hack trick genius can't avoid lifehack",
    ),
    _fmt(
        "always-has-been",
        "Always Has Been",
        "One astronaut realizes a hidden truth; the other says it always was so.",
        "labels",
        (
            ("realization", STEP, "'Wait, it's all ...?' discovery"),
            ("reply", LABEL, "usually 'Always has been'"),
        ),
        "always realize truth secret actually wait conspiracy space been discover",
    ),
    _fmt(
        "panik-kalm-panik",
        "Panik Kalm Panik",
        "Scary news, a reassuring detail, then a detail that makes it worse.",
        "multi_panel",
        (
            ("panik", STEP, "the scary news"),
            ("kalm", STEP, "the reassuring detail"),
            ("panik_again", STEP, "the detail that makes it worse"),
        ),
        "panic calm worry anxiety scary relief twist news afraid stress exam",
    ),
    _fmt(
        "buff-doge-vs-cheems",
        "Buff Doge vs. Cheems",
        "The mighty version of something in the past next to its feeble version today.",
        "two_panel",
        (
            ("buff", PANEL, "the mighty past version"),
            ("cheems", PANEL, "the feeble present version"),
        ),
        "then now past present old modern strong weak back days nostalgia generation before",
    ),
    _fmt(
        "hide-the-pain-harold",
        "Hide the Pain Harold",
        "A forced smile over quiet suffering.",
        "top_bottom",
        (("top", CAPTION, "the painful situation"), ("bottom", CAPTION, "the forced-smile line")),
        "pain smile pretend awkward suffering hide hurt okay coping tired fake",
    ),
    _fmt(
        "tuxedo-winnie-the-pooh",
        "Tuxedo Winnie the Pooh",
        "The plain way of saying something next to the pretentious way.",
        "two_panel",
        (
            ("plain", PANEL, "the ordinary way to say it"),
            ("fancy", PANEL, "the pretentious way to say it"),
        ),
        "fancy classy sophisticated formal elegant pretentious rebrand jargon posh name "
        "professional",
    ),
    _fmt(
        "buzz-everywhere",
        "X, X Everywhere",
        "Buzz Lightyear points out that something is suddenly everywhere.",
        "top_bottom",
        (("top", STEP, "the thing you keep noticing"), ("bottom", STEP, "'..., ... everywhere'")),
        "everywhere every all ubiquitous trend lots many spread constantly",
    ),
    _fmt(
        "mocking-spongebob",
        "Mocking SpongeBob",
        "A statement repeated back in mocking alternating caps.",
        "top_bottom",
        (
            ("top", CAPTION, "the statement being mocked"),
            ("bottom", CAPTION, "the same words in mocking alternating caps"),
        ),
        "mock sarcasm sarcastic mocking quote repeat silly dumb excuse says",
    ),
    _fmt(
        "epic-handshake",
        "Epic Handshake",
        "Two unlikely groups agree on one shared thing.",
        "labels",
        (
            ("left", LABEL, "one group"),
            ("right", LABEL, "an unlikely other group"),
            ("handshake", LABEL, "what they agree on"),
        ),
        "agree common together unite both handshake alliance shared same team everyone",
    ),
    _fmt(
        "trade-offer",
        "Trade Offer",
        "A lopsided deal: what I receive versus what you receive.",
        "labels",
        (("i_receive", 50, "what I get"), ("you_receive", 50, "what you get")),
        "trade offer deal exchange bargain give receive get swap negotiate",
    ),
    _fmt(
        "batman-slapping-robin",
        "Batman Slapping Robin",
        "A naive remark gets cut off by a firm slap-down reply.",
        "two_panel",
        (
            ("robin", PANEL, "the naive remark being cut off"),
            ("batman", PANEL, "the slap-down reply"),
        ),
        "slap stop shut interrupt correct wrong naive scold reply nope",
    ),
)

CATALOGUE: Mapping[str, MemeFormat] = MappingProxyType({f.name: f for f in _FORMATS})


def normalize_name(name: str) -> str:
    """The slug an LM or a user most likely meant: case, quotes and separators forgiven."""
    slug = name.strip().strip("`'\".").lower()
    return "-".join(slug.replace("_", " ").replace("-", " ").split())


def get_format(name: str) -> MemeFormat:
    """The format called ``name`` (normalized); raises UnknownFormat otherwise."""
    try:
        return CATALOGUE[normalize_name(name)]
    except KeyError:
        raise UnknownFormat(f"unknown meme format {name!r}") from None


def catalogue_json() -> list[dict[str, Any]]:
    """The catalogue as plain data for the gateway's format listing."""
    return [
        {
            "name": f.name,
            "title": f.title,
            "description": f.description,
            "layout": f.layout,
            "slots": [{"name": s.name, "max_chars": s.max_chars, "hint": s.hint} for s in f.slots],
        }
        for f in CATALOGUE.values()
    ]
