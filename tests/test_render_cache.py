"""The renderer's per-process caches and its own PNG encoder (memesys.render.image).

The background under the captions is cached per layout, caption count, key, size and template;
what is cached must never be drawn on. The PNG is written by the module itself (Up filter +
zlib), so it is checked against Pillow's decoder: valid chunks and CRCs, the size asked for and
exactly the pixels that were drawn.
"""

from __future__ import annotations

import io
import os
import random
import threading

import pytest
from PIL import Image, ImageChops, ImageDraw

from memesys.domain.formats import CATALOGUE, LAYOUTS, SLOT_COUNTS
from memesys.render import image as render
from memesys.render.image import render_png


@pytest.fixture(autouse=True)
def _empty_cache():
    render._BACKGROUNDS.clear()
    yield
    render._BACKGROUNDS.clear()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # chunk layout and every chunk's CRC
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGB"
    img.load()  # the whole zlib stream and every row filter
    return img


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_captions_drawn_on_a_cached_background_do_not_reach_the_next_meme(layout: str) -> None:
    n = SLOT_COUNTS[layout][0]
    blank_first = _decode(render_png(layout, [""] * n, background_key="shared"))
    with_text = _decode(render_png(layout, ["SOME CAPTION"] * n, background_key="shared"))
    assert len(render._BACKGROUNDS) == 1  # the second meme was drawn on the cached background
    assert not _same(with_text, blank_first)
    blank_after = _decode(render_png(layout, [""] * n, background_key="shared"))
    assert _same(blank_after, blank_first)


def test_the_cache_hands_out_copies() -> None:
    first, _ = render._background("top_bottom", 2, "k", (200, 100), "")
    before = first.copy()
    ImageDraw.Draw(first).rectangle((0, 0, 199, 99), fill="red")
    second, slots = render._background("top_bottom", 2, "k", (200, 100), "")
    assert second is not first and _same(second, before)
    slots.clear()  # the caller's list, not the cache's
    assert len(render._background("top_bottom", 2, "k", (200, 100), "")[1]) == 2


def test_a_cached_background_draws_the_same_meme_as_a_fresh_one() -> None:
    texts = ["one does not simply", "cache a background"]
    cold = render_png("top_bottom", texts, background_key="x:1")
    warm = render_png("top_bottom", texts, background_key="x:1")
    render._BACKGROUNDS.clear()
    assert cold == warm == render_png("top_bottom", texts, background_key="x:1")


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_format_gives_a_valid_png_of_the_configured_size(name: str) -> None:
    fmt = CATALOGUE[name]
    texts = [f"{slot.name} text" for slot in fmt.slots]
    for width, height in ((640, 640), (333, 257), (64, 2048)):
        png = render_png(fmt.layout, texts, background_key=f"{name}:0", width=width, height=height)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
        assert _decode(png).size == (width, height)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (64, 64), (257, 131)])
def test_the_encoder_is_lossless(size: tuple[int, int]) -> None:
    rng = random.Random(1)  # noise: every byte value, differences that wrap around 0 and 255
    img = Image.frombytes(
        "RGB", size, bytes(rng.randrange(256) for _ in range(3 * size[0] * size[1]))
    )
    decoded = _decode(render._encode_png(img))
    assert decoded.tobytes() == img.tobytes()


def test_the_encoder_converts_other_modes() -> None:
    img = Image.new("RGBA", (10, 10), (10, 20, 30, 40))
    assert _decode(render._encode_png(img)).getpixel((5, 5)) == (10, 20, 30)


def test_the_cache_is_bounded_by_pixel_memory_and_drops_the_least_recently_used() -> None:
    cache = render._BackgroundCache(max_bytes=3 * 100 * 100 * 4)  # three 100x100 RGB pictures

    def make(colour: str):
        return lambda: (Image.new("RGB", (100, 100), colour), [])

    for colour in ("red", "green", "blue"):
        cache.get((colour,), make(colour))
    cache.get(("red",), make("red"))  # red is now the most recently used
    cache.get(("white",), make("white"))  # over the bound: green goes
    assert len(cache) == 3 and cache.bytes == 3 * 100 * 100 * 4
    drawn = []
    cache.get(("green",), lambda: drawn.append("green") or make("green")())
    cache.get(("red",), lambda: drawn.append("red") or make("red")())
    assert drawn == ["green"]  # green was redrawn, red was still there
    cache.get(("huge",), lambda: (Image.new("RGB", (1000, 1000)), []))  # over the whole bound
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes


def test_the_default_bound_holds_every_format_at_the_default_size() -> None:
    per_picture = 640 * 640 * 4
    assert render._BACKGROUND_CACHE_BYTES // per_picture >= len(CATALOGUE)
    for name, fmt in CATALOGUE.items():
        render_png(fmt.layout, ["a"] * len(fmt.slots), background_key=f"{name}:0")
    assert len(render._BACKGROUNDS) == len(CATALOGUE)
    assert render._BACKGROUNDS.bytes == len(CATALOGUE) * per_picture
    for seed in range(1, 40):  # many more keys: the cache stays within its bound
        render_png("top_bottom", ["a", "b"], background_key=f"k:{seed}")
    assert render._BACKGROUNDS.bytes <= render._BACKGROUND_CACHE_BYTES


def test_an_edited_template_is_drawn_again(tmp_path) -> None:
    path = tmp_path / "drake.png"
    Image.new("RGB", (50, 50), (0, 200, 0)).save(path)
    kw = {"background_key": "k", "width": 100, "height": 100, "template_path": str(path)}
    assert _decode(render_png("top_bottom", ["", ""], **kw)).getpixel((50, 50)) == (0, 200, 0)
    Image.new("RGB", (60, 60), (200, 0, 0)).save(path)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert _decode(render_png("top_bottom", ["", ""], **kw)).getpixel((50, 50)) == (200, 0, 0)


def test_threads_rendering_one_key_all_get_the_same_meme() -> None:
    texts = ["no thanks", "yes please"]
    expected = render_png("two_panel", texts, background_key="t")
    render._BACKGROUNDS.clear()
    results: list[bytes] = []

    def work() -> None:
        for i in range(5):
            results.append(
                render_png("two_panel", texts if i % 2 else ["", ""], background_key="t")
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    blank = render_png("two_panel", ["", ""], background_key="t")
    assert expected != blank
    assert set(results) == {expected, blank}  # each one exactly as drawn alone
