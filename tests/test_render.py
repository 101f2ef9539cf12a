"""Tests for memesys.render.image: valid PNGs, visible outlined text, fitting, determinism,
errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFont

from memesys.domain.formats import LAYOUTS
from memesys.render import image as render
from memesys.render.image import RenderError, fit_text, render_png

SAMPLE_TEXTS = {
    "top_bottom": ["top text", "bottom text"],
    "two_panel": ["no thanks", "yes please"],
    "labels": ["me", "new thing", "old thing"],
    "multi_panel": ["small", "bigger idea", "galaxy brain"],
}
VALID_COUNTS = {"top_bottom": (2, 2), "two_panel": (2, 4), "labels": (2, 4), "multi_panel": (3, 6)}


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img.convert("RGB")


def _render(layout: str, texts: list[str], key: str = "k", **kw: object) -> Image.Image:
    return _decode(render_png(layout, texts, background_key=key, **kw))  # type: ignore[arg-type]


def _any_changed(img: Image.Image, changed: Image.Image, lo: int, hi: int) -> bool:
    """True if some changed pixel has grey level within [lo, hi]."""
    tone = img.convert("L").point(lambda v: 255 if lo <= v <= hi else 0)
    return ImageChops.multiply(tone, changed).getbbox() is not None


def _changed_mask(a: Image.Image, b: Image.Image) -> Image.Image:
    return ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 0 else 0)


def _load_font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont)
    return font


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_renders_png_of_configured_size(layout: str) -> None:
    img = _render(layout, SAMPLE_TEXTS[layout], width=400, height=300)
    assert img.size == (400, 300)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_captions_draw_white_text_with_black_outline(layout: str) -> None:
    texts = SAMPLE_TEXTS[layout]
    with_text = _render(layout, texts)
    blank = _render(layout, [""] * len(texts))
    changed = _changed_mask(with_text, blank)
    assert changed.getbbox() is not None
    assert _any_changed(with_text, changed, 235, 255)  # white fill
    assert _any_changed(with_text, changed, 0, 20)  # black outline


def test_top_caption_lands_in_top_band() -> None:
    with_text = _render("top_bottom", ["hello there", ""])
    blank = _render("top_bottom", ["", ""])
    bbox = _changed_mask(with_text, blank).getbbox()
    assert bbox is not None
    assert bbox[3] <= 640 * 0.3


def test_same_inputs_give_identical_bytes() -> None:
    args = ("labels", ["a", "b", "c"])
    assert render_png(*args, background_key="same") == render_png(*args, background_key="same")


def test_different_keys_give_different_pictures() -> None:
    a = _render("top_bottom", ["", ""], key="alpha")
    b = _render("top_bottom", ["", ""], key="beta")
    assert ImageChops.difference(a, b).getbbox() is not None


def test_long_caption_is_fitted_with_smaller_font_and_no_words_lost() -> None:
    long_text = " ".join(["caption"] * 19)[:150].upper()
    short_size, _ = fit_text(_load_font, "SHORT", 600, 160, max_size=80)
    long_size, lines = fit_text(_load_font, long_text, 600, 160, max_size=80)
    assert long_size < short_size
    assert len(lines) > 1
    assert " ".join(lines).split() == long_text.split()
    render_png("top_bottom", [long_text, long_text], background_key="k")


def test_fit_text_empty_gives_no_lines() -> None:
    assert fit_text(_load_font, "   ", 100, 100, max_size=40)[1] == []


def test_absurd_caption_raises() -> None:
    with pytest.raises(RenderError, match="too long"):
        render_png("top_bottom", ["word " * 1000, ""], background_key="k")


KAPITAEN = "Donaudampfschifffahrtsgesellschaftskapitän".upper()


def test_a_word_wider_than_the_slot_is_hyphenated_and_nothing_is_lost() -> None:
    size, lines = fit_text(_load_font, KAPITAEN, 200, 160, max_size=80)
    assert len(lines) > 1 and all(line.endswith("-") for line in lines[:-1])
    assert "".join(line.removesuffix("-") for line in lines) == KAPITAEN
    assert all(_load_font(size).getlength(line) <= 200 for line in lines)
    render_png("top_bottom", ["W" * 200, ""], background_key="k")  # was "too long"


def test_a_long_word_shares_its_first_line_and_keeps_the_words_around_it() -> None:
    text = f"ME AND THE {KAPITAEN} AGAIN"
    _size, lines = fit_text(_load_font, text, 260, 400, max_size=40)
    assert lines[0].startswith("ME AND")
    joined = "".join(line if line.endswith("-") else line + " " for line in lines)
    assert joined.replace("-", "").split() == text.split()


def test_words_are_broken_only_when_that_makes_the_text_much_larger() -> None:
    # Fits whole at a size close to the largest: no word is broken.
    _size, lines = fit_text(_load_font, "EXTRAORDINARY CLAIMS", 300, 200, max_size=40)
    assert not any(line.endswith("-") for line in lines)
    # Whole, it would need a tiny font: broken, it is at least _BREAK_GAIN times larger.
    whole = fit_text(_load_font, KAPITAEN, 300, 300, max_size=12)[0]
    broken, lines = fit_text(_load_font, KAPITAEN, 300, 300, max_size=80)
    assert broken >= whole * render._BREAK_GAIN and len(lines) > 1


def test_a_combining_mark_stays_with_its_letter() -> None:
    word = "E\u0301" * 60
    _, lines = fit_text(_load_font, word, 120, 400, max_size=30)
    assert len(lines) > 1
    assert not any(line.startswith("\u0301") for line in lines)
    assert "".join(line.removesuffix("-") for line in lines) == word


def test_a_small_image_shrinks_below_the_usual_minimum_rather_than_fail() -> None:
    texts = ["W" * 70, "W" * 70, "W" * 70, "W" * 70]
    img = _render("multi_panel", texts, width=256, height=256)
    assert img.size == (256, 256)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrong_text_counts_raise(layout: str) -> None:
    lo, hi = VALID_COUNTS[layout]
    for n in (lo - 1, hi + 1):
        with pytest.raises(RenderError):
            render_png(layout, ["t"] * n, background_key="k")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_valid_counts_render(layout: str) -> None:
    lo, hi = VALID_COUNTS[layout]
    for n in range(lo, hi + 1):
        _render(layout, [f"caption {i}" for i in range(n)])


def test_unknown_layout_raises() -> None:
    with pytest.raises(RenderError):
        render_png("nope", ["a", "b"], background_key="k")


@pytest.mark.parametrize(("width", "height"), [(63, 640), (640, 2049), (0, 0)])
def test_out_of_bounds_size_raises(width: int, height: int) -> None:
    with pytest.raises(RenderError):
        render_png("top_bottom", ["a", "b"], background_key="k", width=width, height=height)


def test_max_bytes_enforced() -> None:
    with pytest.raises(RenderError, match="max_bytes"):
        render_png("top_bottom", ["a", "b"], background_key="k", max_bytes=100)


def test_unreadable_font_path_raises() -> None:
    with pytest.raises(RenderError, match="font"):
        render_png("top_bottom", ["a", "b"], background_key="k", font_path="/nonexistent/font.ttf")


def test_render_error_is_value_error() -> None:
    assert issubclass(RenderError, ValueError)


def test_non_font_file_raises(tmp_path: Path) -> None:
    bogus = tmp_path / "font.ttf"
    bogus.write_bytes(b"not a font")
    with pytest.raises(RenderError, match="font"):
        render_png("top_bottom", ["a", "b"], background_key="k", font_path=str(bogus))


def test_builtin_font_fallback_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "_DEJAVU_BOLD", "/nonexistent/DejaVuSans-Bold.ttf")
    img = _render("top_bottom", ["fallback font", "still works"])
    assert img.size == (640, 640)


def test_a_template_image_is_the_background(tmp_path):
    from memesys.render.meme import find_template

    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "drake.jpg")
    template = find_template(str(tmp_path), "drake")
    assert template.endswith("drake.jpg") and find_template(str(tmp_path), "other") == ""
    png = render_png(
        "top_bottom", ["", ""], background_key="k", width=200, height=200, template_path=template
    )
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (200, 200)
    r, g, b = img.getpixel((100, 100))
    assert g > 150 and r < 60 and b < 80  # the template's green, not a procedural scene
    with pytest.raises(RenderError):
        render_png(
            "top_bottom", ["a", "b"], background_key="k", template_path=str(tmp_path / "x.png")
        )
