"""Rendering never fails on legal text: every caption the validator accepts
(``memesys.pipeline.writing.validate_texts``, i.e. ``domain.formats.slot_problem``: not empty,
at most the slot's ``max_chars``) renders in every one of the 28 formats, at the default size
and at the extremes of the configurable ``render.width``/``render.height``.

A Hypothesis property over any Unicode (surrogates, combining marks, controls, emoji, glyphs
the font lacks) and long words of the widest glyphs; then the worst cases spelled out for every
format (each slot full of one word of the widest letter, the 200-letter topic of the issue).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from memesys.config.sections import RenderConfig
from memesys.domain.formats import CATALOGUE, MemeFormat
from memesys.pipeline.writing import CaptionError, validate_texts
from memesys.render.image import render_png

FORMATS = sorted(CATALOGUE)
# The widest glyphs of DejaVu Sans Bold (upper-cased as drawn), a full-width letter, an emoji
# and a character the font lacks (drawn as its missing-glyph box).
WIDE = "ŒWÆM%@Ｗ😀﷽𒐫"
KAPITAEN = "Donaudampfschifffahrtsgesellschaftskapitän"


def _bounds(key: str) -> tuple[int, int]:
    meta = RenderConfig.__dataclass_fields__[key].metadata
    return meta["min"], meta["max"]


W_MIN, W_MAX = _bounds("width")
H_MIN, H_MAX = _bounds("height")
SIZES = [(640, 640), (W_MIN, H_MIN), (W_MIN, H_MAX), (W_MAX, H_MIN)]


def render(
    fmt: MemeFormat, texts: tuple[str, ...], size: tuple[int, int], key: str = "property"
) -> None:
    png = render_png(fmt.layout, list(texts), background_key=key, width=size[0], height=size[1])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == size


def caption(max_chars: int) -> st.SearchStrategy[str]:
    anything = st.one_of(st.characters(exclude_categories=()), st.sampled_from(WIDE), st.just(" "))
    return st.one_of(
        st.text(anything, min_size=1, max_size=max_chars),
        st.builds(lambda ch, n: ch * n, st.sampled_from(WIDE), st.integers(1, max_chars)),
        st.builds(lambda n: (KAPITAEN * 5)[:n], st.integers(1, max_chars)),
    )


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.sampled_from(FORMATS), st.sampled_from(SIZES), st.data())
def test_every_caption_the_validator_accepts_renders(
    name: str, size: tuple[int, int], data: Any
) -> None:
    fmt = CATALOGUE[name]
    captions = [data.draw(caption(slot.max_chars), label=slot.name) for slot in fmt.slots]
    try:
        texts = validate_texts(fmt, captions)
    except CaptionError:
        return  # not legal (all whitespace): the validator refuses it, nothing to render
    render(fmt, texts, size, data.draw(st.text(max_size=12), label="background_key"))


@pytest.mark.parametrize("size", SIZES[:2], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", FORMATS)
def test_every_format_renders_its_longest_words(name: str, size: tuple[int, int]) -> None:
    """The worst legal captions: every slot one word of its max_chars in the widest glyph, and
    the Kapitän repeated into a word as long as the slot takes; at the default size and at the
    smallest square (every slot box of a larger or oblong image is at least as large; those
    sizes are in the property above)."""
    fmt = CATALOGUE[name]
    for text in ("Œ" * 200, KAPITAEN * 5):
        render(fmt, validate_texts(fmt, [text[: slot.max_chars] for slot in fmt.slots]), size)
