"""The format catalogue: coverage of the classics and the layout rules the renderer relies on."""

from __future__ import annotations

import json

import pytest

from memesys.domain.formats import (
    CATALOGUE,
    LAYOUTS,
    SLOT_COUNTS,
    MemeFormat,
    Slot,
    UnknownFormat,
    catalogue_json,
    get_format,
)

CLASSICS = (
    "drake",
    "distracted-boyfriend",
    "expanding-brain",
    "change-my-mind",
    "two-buttons",
    "is-this-a-pigeon",
    "one-does-not-simply",
    "success-kid",
    "bad-luck-brian",
    "this-is-fine",
    "woman-yelling-at-cat",
    "surprised-pikachu",
    "gru-plan",
    "uno-draw-25",
    "left-exit-12",
    "running-away-balloon",
    "disaster-girl",
    "roll-safe",
    "always-has-been",
    "panik-kalm-panik",
    "buff-doge-vs-cheems",
)


def test_catalogue_has_the_classics() -> None:
    assert len(CATALOGUE) >= 20
    assert set(CLASSICS) <= set(CATALOGUE)


@pytest.mark.parametrize("fmt", CATALOGUE.values(), ids=lambda f: f.name)
def test_every_format_obeys_its_layout(fmt: MemeFormat) -> None:
    assert fmt.layout in LAYOUTS
    assert len(fmt.slots) in SLOT_COUNTS[fmt.layout]
    if fmt.layout == "top_bottom":
        assert [s.name for s in fmt.slots] == ["top", "bottom"]
    assert len({s.name for s in fmt.slots}) == len(fmt.slots)
    assert all(s.name.isidentifier() and s.hint and 30 <= s.max_chars <= 80 for s in fmt.slots)
    assert fmt.name == fmt.name.lower() and " " not in fmt.name
    assert fmt.title and fmt.description and fmt.keywords


@pytest.mark.parametrize(
    "name, layout, slots",
    [
        ("drake", "two_panel", ["reject", "prefer"]),
        ("distracted-boyfriend", "labels", ["boyfriend", "girlfriend", "other_woman"]),
        ("expanding-brain", "multi_panel", ["level_1", "level_2", "level_3", "level_4"]),
        ("gru-plan", "multi_panel", ["step_1", "step_2", "step_3", "step_4"]),
        ("panik-kalm-panik", "multi_panel", ["panik", "kalm", "panik_again"]),
        ("buff-doge-vs-cheems", "two_panel", ["buff", "cheems"]),
    ],
)
def test_classic_shapes(name: str, layout: str, slots: list[str]) -> None:
    fmt = get_format(name)
    assert (fmt.layout, [s.name for s in fmt.slots]) == (layout, slots)


@pytest.mark.parametrize(
    "layout, count",
    [
        ("top_bottom", 3),
        ("two_panel", 1),
        ("labels", 5),
        ("multi_panel", 2),
        ("grid", 2),
    ],
)
def test_a_format_breaking_the_layout_rules_is_refused(layout: str, count: int) -> None:
    slots = tuple(Slot(f"s{i}", 40, "hint") for i in range(count))
    with pytest.raises(ValueError):
        MemeFormat("bad", "Bad", "never fits", layout, slots, ("x",))


@pytest.mark.parametrize("spelling", ["Drake", " drake ", "`drake`", "DRAKE."])
def test_get_format_forgives_spelling(spelling: str) -> None:
    assert get_format(spelling).name == "drake"


@pytest.mark.parametrize("spelling", ["Distracted Boyfriend", "distracted_boyfriend"])
def test_get_format_forgives_separators(spelling: str) -> None:
    assert get_format(spelling).name == "distracted-boyfriend"


def test_unknown_format_is_a_key_error() -> None:
    with pytest.raises(UnknownFormat, match="nyan-cat"):
        get_format("nyan-cat")
    assert issubclass(UnknownFormat, KeyError)


def test_catalogue_json_shape() -> None:
    listing = json.loads(json.dumps(catalogue_json()))
    assert [entry["name"] for entry in listing] == list(CATALOGUE)
    for entry in listing:
        assert set(entry) == {"name", "title", "description", "layout", "slots"}
        fmt = CATALOGUE[entry["name"]]
        assert entry["layout"] == fmt.layout
        assert entry["slots"] == [
            {"name": s.name, "max_chars": s.max_chars, "hint": s.hint} for s in fmt.slots
        ]
