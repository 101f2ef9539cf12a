"""Render meme images as PNG bytes from a layout name and caption texts.

No image assets ship with memesys, so every picture is drawn procedurally and
seeded from ``background_key``: the same key always yields the same pixels,
which keeps output reproducible (cacheable, testable) without any files.
Captions use the classic meme look (upper-case, white fill, black outline)
and are fitted to their slot by shrinking the font; a word wider than the slot
is broken with a hyphen (also when that keeps the text markedly larger than
fitting it whole would). Text is never cut off: a caption that does not fit
even broken at the smallest size raises :class:`RenderError`, which no caption
the validator accepts (``domain.formats.slot_problem``) does at the default
size (tests/test_render_property.py checks every format with Hypothesis).

Per process, the picture under the captions is cached (bounded by its pixel memory) and fonts
are cached per size; the PNG is written by :func:`_encode_png`, about 4x faster than Pillow's
encoder (see ``_PNG_DEFLATE_LEVEL``).
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import os
import random
import struct
import threading
import unicodedata
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

from isal import isal_zlib
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

from memesys.domain.formats import LAYOUTS, SLOT_COUNTS
from memesys.errors import ErrorCode, MemesysError

CacheKey = tuple[Hashable, ...]  # what a cached picture depends on

__all__ = ["RenderError", "fit_text", "render_png"]

_DEJAVU_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
_MIN_FONT = 12
# Only for captions that do not fit at _MIN_FONT even broken (small configured images): the
# smallest size tried before giving up. At render.width/height >= 256 no legal caption needs
# less (tests/test_render_property.py).
_FLOOR_FONT = 4
# Break a word only when it cannot fit whole, or when breaking lets the caption be at least
# this many times larger than fitting every word whole would (a 40-letter word in a narrow
# label reads better as two hyphenated lines at 24 px than whole at 12 px).
_BREAK_GAIN = 1.5
_HYPHEN = "-"
_MIN_PIECE = 3  # characters of a broken word kept on a line that already holds other words
_MIN_DIM, _MAX_DIM = 64, 2048
_HEIGHT_PROBE = "HQJgy"  # ascender-to-descender extent, so line pitch is text-independent
# The picture under the captions (scene or template, panels, figures) and its caption slots
# depend only on layout, caption count, key, size and template, so each process keeps the
# recent ones. Bounded by memory, not count: Pillow holds an RGB pixel in 4 bytes, so a
# 640x640 background is 1.6 MB and 48 MiB keeps 30 of them (every format at one seed; the
# daemon's key is "<format>:<seed>"), but only 2 at 2048x2048. A miss costs ~6 ms of drawing.
_BACKGROUND_CACHE_BYTES = 48 * 1024 * 1024
# PNG encoding (measured over the 28 formats at 640x640,
# docs/perf/2026-11-30-render-cpu-profile.md):
# every row with the Up filter, then deflate. Pillow's encoder picks one of the five filters per
# row by trying them all, ~5 ms before compressing anything: at its default level 6 a PNG took
# 13.3 ms and 71 KB, at level 1 7.5 ms and 87 KB. With the Up filter, zlib at level 1 took
# 3.3 ms to deflate 55 KB (2: 3.8 ms, 52 KB; 3: 5.1 ms, 47 KB; its RLE and Huffman-only
# strategies are slower); ISA-L's deflate (python-isal, a zlib-compatible stream) at its level 1
# takes 0.54 ms for 51 KB. CPU is what limits the daemon, the bytes only pass through memory and
# Redis. A 256-colour palette would be 28 KB but moves colours by up to 15-37 levels (bands in
# the gradients): not used.
_PNG_DEFLATE_LEVEL = 1

Box = tuple[int, int, int, int]
FontLoader = Callable[[int], ImageFont.FreeTypeFont]
VAlign = Literal["top", "middle", "bottom"]


class RenderError(MemesysError, ValueError):
    """Inputs cannot produce a valid meme (bad layout/count/size, unfittable text, too big)."""

    code = ErrorCode.RENDER_ERROR


@dataclass(frozen=True)
class _Slot:
    """Where one caption goes; ``valign`` lets top/bottom captions hug the image edges."""

    box: Box
    valign: VAlign = "middle"


def render_png(
    layout: str,
    texts: list[str],
    *,
    background_key: str,
    width: int = 640,
    height: int = 640,
    font_path: str = "",
    max_bytes: int = 2_000_000,
    template_path: str = "",
) -> bytes:
    """Draw ``texts`` onto a procedural picture in ``layout`` and return PNG bytes.

    With ``template_path`` the picture is that image, scaled and cropped to the size; the
    layout then only places the caption boxes.

    Raises RenderError for an unknown layout, a wrong number of texts, a size
    outside 64..2048, an unreadable font, a caption that does not fit even at
    the minimum font size, or an encoded PNG larger than ``max_bytes``.
    """
    _validate(layout, texts, width, height)
    font_for = _font_loader(font_path)
    img, slots = _background(layout, len(texts), background_key, (width, height), template_path)
    draw = ImageDraw.Draw(img)
    max_size = max(_MIN_FONT, min(width, height) // 8)
    for text, slot in zip(texts, slots, strict=True):
        _draw_caption(draw, text, slot, font_for, max_size)
    data = _encode_png(img)
    if len(data) > max_bytes:
        raise RenderError(f"PNG is {len(data)} bytes, over max_bytes={max_bytes}")
    return data


def fit_text(
    font_for: FontLoader,
    text: str,
    box_w: int,
    box_h: int,
    *,
    max_size: int,
    min_size: int = _MIN_FONT,
) -> tuple[int, list[str]]:
    """Return the largest font size (and its wrapped lines) that fits the box.

    Equivalent to "start at ``max_size`` and shrink until it fits", but searches from an
    estimate of the size, so a caption costs two or three wrap attempts instead of one per
    size. Words are wrapped whole when they can be; a word wider than
    a line is broken with a hyphen, which is also chosen when it lets the text
    be at least ``_BREAK_GAIN`` times larger. Nothing is ever dropped: if even
    ``min_size`` with broken words cannot hold the text, RenderError is raised.
    Empty text yields no lines.
    """
    words = text.split()
    if not words:
        return max_size, []
    start = _estimate(font_for, text, box_w, box_h, min_size, max_size)
    whole = _largest(font_for, words, box_w, box_h, min_size, max_size, start, breaking=False)
    if whole is None or whole[0] * _BREAK_GAIN <= max_size:
        floor = min_size if whole is None else max(min_size, math.ceil(whole[0] * _BREAK_GAIN))
        # Breaking rarely fits at the floor: probing it first settles most captions at once.
        broken = _largest(font_for, words, box_w, box_h, floor, max_size, floor, breaking=True)
        if broken is not None:
            return broken
    if whole is None:
        raise RenderError("caption too long for slot")
    return whole


def _estimate(font_for: FontLoader, text: str, box_w: int, box_h: int, lo: int, hi: int) -> int:
    """The largest size in ``lo..hi`` at which the text, packed without word-wrap waste, fills
    no more lines than the box holds: where :func:`_largest` starts, so that a caption is
    settled in two or three wraps instead of the seven of a binary search over 12..80."""
    per_px = _length(font_for(hi), text) / hi  # width grows with the size, nearly linearly
    for size in range(hi, lo, -1):
        avail = box_w - 2 * _stroke_width(size)
        pitch = _line_height(font_for(size), size) + _line_gap(size)
        if avail > 0 and math.ceil(size * per_px / avail) <= (box_h + _line_gap(size)) // pitch:
            return size
    return lo


def _largest(
    font_for: FontLoader,
    words: list[str],
    box_w: int,
    box_h: int,
    lo: int,
    hi: int,
    start: int,
    *,
    breaking: bool,
) -> tuple[int, list[str]] | None:
    """The largest size in ``lo..hi`` whose wrap fits, or None.

    Like a binary search it takes fitting to be monotone in the size, but it gallops from
    ``start`` (1, 2, 4... sizes up while the wrap fits, down while it does not) and bisects
    only the last gap, so a good ``start`` costs two wraps.
    """
    hi = max(lo, hi)
    good, bad = lo - 1, hi + 1  # the largest size known to fit, the smallest known not to
    best: tuple[int, list[str]] | None = None
    probe, step = min(max(start, lo), hi), 1
    while good + 1 < bad:
        lines = _wrap(font_for(probe), probe, words, box_w, box_h, breaking=breaking)
        if lines is None:
            bad = probe
        else:
            good, best = probe, (probe, lines)
        if bad > hi:
            probe = min(good + step, hi)
        elif good < lo:
            probe = max(bad - step, lo)
        else:
            probe = (good + bad) // 2
        step *= 2
    return best


def _encode_png(img: Image.Image) -> bytes:
    """Lossless 8-bit RGB PNG of ``img``: row 0 unfiltered, every other row with the Up filter
    (the byte-wise difference from the row above, done by Pillow in C), one IDAT chunk."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    stride = 3 * w
    # offset() wraps the last row round to the top, so row 0's difference is unusable: it is
    # written raw (filter 0) instead.
    up = memoryview(ImageChops.subtract_modulo(img, ImageChops.offset(img, 0, 1)).tobytes())
    rows: list[bytes | memoryview] = [b"\x00", img.crop((0, 0, w, 1)).tobytes()]
    for start in range(stride, h * stride, stride):
        rows += (b"\x02", up[start : start + stride])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    idat = isal_zlib.compress(b"".join(rows), _PNG_DEFLATE_LEVEL)
    return b"".join(
        [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join(
        [
            struct.pack(">I", len(data)),
            kind,
            data,
            struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))),
        ]
    )


# --- validation & fonts ---------------------------------------------------------


def _validate(layout: str, texts: list[str], width: int, height: int) -> None:
    """Reject bad requests before spending time drawing."""
    if layout not in SLOT_COUNTS:
        raise RenderError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    lo, hi = SLOT_COUNTS[layout][0], SLOT_COUNTS[layout][-1]
    if len(texts) not in SLOT_COUNTS[layout]:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise RenderError(f"layout {layout!r} takes {want} texts, got {len(texts)}")
    if not all(isinstance(t, str) for t in texts):
        raise RenderError("texts must be strings")
    for name, dim in (("width", width), ("height", height)):
        if not _MIN_DIM <= dim <= _MAX_DIM:
            raise RenderError(f"{name}={dim} outside {_MIN_DIM}..{_MAX_DIM}")


def _font_loader(font_path: str) -> FontLoader:
    """Resolve the font source once and probe it so a bad path fails fast."""
    path = font_path or (_DEJAVU_BOLD if os.path.isfile(_DEJAVU_BOLD) else "")
    loader = functools.partial(_load_font, path)
    try:
        loader(_MIN_FONT)
    except (OSError, ValueError) as exc:
        raise RenderError(f"cannot read font {font_path!r}: {exc}") from exc
    return loader


@functools.lru_cache(maxsize=512)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """Load (and cache: fitting asks for many sizes) a font; '' means Pillow's built-in."""
    if path:
        return ImageFont.truetype(path, size)
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RenderError("Pillow lacks FreeType; no scalable font available")
    return font


# --- text -------------------------------------------------------------------------


def _stroke_width(size: int) -> int:
    """Outline thickness proportional to the font so small and big text look alike."""
    return max(1, round(size / 14))


def _line_gap(size: int) -> int:
    return size // 8


@functools.lru_cache(maxsize=4096)  # as _line_height: the fonts are the ones _load_font keeps
def _length(font: ImageFont.FreeTypeFont, text: str) -> float:
    """``font.getlength(text)``, remembered: fitting a caption measures the same lines again
    (the whole-word pass and the hyphenating pass probe the same sizes, a line break measures
    the word it moves), 40-60 % of a render's ~140 measurements, ~20 µs each."""
    return font.getlength(text)


@functools.lru_cache(maxsize=512)  # as _load_font: the fonts are the ones it keeps alive
def _line_height(font: ImageFont.FreeTypeFont, size: int) -> int:
    return int(font.getbbox(_HEIGHT_PROBE)[3]) + 2 * _stroke_width(size)


def _wrap(
    font: ImageFont.FreeTypeFont,
    size: int,
    words: list[str],
    box_w: int,
    box_h: int,
    *,
    breaking: bool = False,
) -> list[str] | None:
    """Greedy word wrap at one size; None as soon as it is clear the box overflows.

    With ``breaking``, a word wider than the line is split across lines with a
    hyphen (its first piece may share the line with the words before it).
    """
    avail = box_w - 2 * _stroke_width(size)
    pitch = _line_height(font, size) + _line_gap(size)
    max_lines = (box_h + _line_gap(size)) // pitch
    if max_lines < 1 or avail <= 0:
        return None
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if _length(font, candidate) <= avail:
            current = candidate
        elif current and _length(font, word) <= avail:
            lines.append(current)
            current = word
        elif not breaking:
            return None
        else:
            pieces = _break_word(font, word, avail, f"{current} " if current else "")
            if pieces is None:
                return None
            lines += pieces[:-1]
            current = pieces[-1]
        if len(lines) >= max_lines:
            return None
    lines.append(current)
    return lines if len(lines) <= max_lines else None


def _break_word(
    font: ImageFont.FreeTypeFont, word: str, avail: float, lead: str
) -> list[str] | None:
    """``lead + word`` as lines no wider than ``avail``, the word split with hyphens; the last
    line is left open for the words that follow. None if not even one character fits."""
    lines: list[str] = []
    line, rest = lead, word
    while _length(font, line + rest) > avail:
        cut = _longest_piece(font, line, rest, avail)
        if cut < (_MIN_PIECE if line else 1):
            if not line:
                return None
            lines.append(line.rstrip())  # too little room after the lead: a fresh line
            line = ""
            continue
        piece = rest[:cut]
        lines.append(line + piece + ("" if piece.endswith(_HYPHEN) else _HYPHEN))
        line, rest = "", rest[cut:]
    return [*lines, line + rest]


def _longest_piece(font: ImageFont.FreeTypeFont, line: str, rest: str, avail: float) -> int:
    """The most characters of ``rest`` that fit after ``line`` with a hyphen (0: none), never
    separating a character from the combining marks that follow it."""
    lo, hi, best = 1, len(rest) - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if _length(font, line + rest[:mid] + _HYPHEN) <= avail:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    while 0 < best < len(rest) and unicodedata.combining(rest[best]):
        best -= 1
    return best


def _draw_caption(
    draw: ImageDraw.ImageDraw, text: str, slot: _Slot, font_for: FontLoader, max_size: int
) -> None:
    """Fit and draw one upper-cased, outlined, horizontally centred caption."""
    x0, y0, x1, y1 = slot.box
    text = text.upper()
    try:
        size, lines = fit_text(font_for, text, x1 - x0, y1 - y0, max_size=max_size)
    except RenderError:  # small text beats no meme
        size, lines = fit_text(
            font_for, text, x1 - x0, y1 - y0, max_size=_MIN_FONT - 1, min_size=_FLOOR_FONT
        )
    if not lines:
        return
    font = font_for(size)
    stroke = _stroke_width(size)
    pitch = _line_height(font, size) + _line_gap(size)
    block = len(lines) * pitch - _line_gap(size)
    y = {"top": y0, "middle": y0 + (y1 - y0 - block) // 2, "bottom": y1 - block}[slot.valign]
    cx = (x0 + x1) / 2
    for line in lines:
        draw.text(
            (cx, y + stroke),
            line,
            font=font,
            fill="white",
            stroke_width=stroke,
            stroke_fill="black",
            anchor="ma",
        )
        y += pitch


# --- pictures -----------------------------------------------------------------


def _rng(key: str, salt: str) -> random.Random:
    """Stable across processes (unlike hash()), so a key always gives the same picture."""
    digest = hashlib.sha256(f"{key}\0{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    """A saturated-but-not-garish colour; HSV keeps random picks pleasant."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 0.8), rng.uniform(0.35, 0.9))
    return round(r * 255), round(g * 255), round(b * 255)


def _pad(size: tuple[int, int]) -> int:
    return max(4, min(size) // 40)


def _scene(size: tuple[int, int], key: str, salt: str) -> Image.Image:
    """Four-corner gradient plus a few translucent shapes.

    The gradient is a 2x2 image upscaled bilinearly and the shapes go on one
    overlay composited once, so there is no per-pixel Python work. (Blending
    each shape directly would double-blend where Pillow's rounded-rectangle
    pieces overlap, leaving visible seams.)
    """
    rng = _rng(key, salt)
    w, h = size
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_colour(rng) for _ in range(4)])
    gradient = corners.resize(size, Image.Resampling.BILINEAR).convert("RGBA")
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(3, 6)):
        sx, sy = rng.uniform(0.15, 0.5) * w, rng.uniform(0.15, 0.5) * h
        x, y = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        fill = (*_colour(rng), rng.randint(70, 150))
        if rng.random() < 0.6:
            draw.ellipse((x, y, x + sx, y + sy), fill=fill)
        else:
            draw.rounded_rectangle((x, y, x + sx, y + sy), radius=min(sx, sy) / 5, fill=fill)
    return Image.alpha_composite(gradient, overlay).convert("RGB")


class _BackgroundCache:
    """LRU of ``key -> (picture, slots)`` bounded by the pictures' pixel memory; thread-safe
    (the in-process engine renders from a thread pool). Callers get a copy of the picture, so
    drawing captions on it never changes the cached one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, tuple[Image.Image, tuple[_Slot, ...], int]] = (
            OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def get(
        self, key: CacheKey, make: Callable[[], tuple[Image.Image, list[_Slot]]]
    ) -> tuple[Image.Image, list[_Slot]]:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:  # drawn outside the lock: two threads may both draw it, both get it
            img, slots = make()
            hit = (img, tuple(slots), _pixel_bytes(img))
            self._put(key, hit)
        return hit[0].copy(), list(hit[1])

    def _put(self, key: CacheKey, entry: tuple[Image.Image, tuple[_Slot, ...], int]) -> None:
        if entry[2] > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += entry[2] - (old[2] if old else 0)
            self._items[key] = entry
            while self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][2]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes


def _pixel_bytes(img: Image.Image) -> int:
    """What Pillow holds for the pixels: 4 bytes a pixel for RGB/RGBA, 1 for L/P."""
    return img.width * img.height * (1 if len(img.getbands()) == 1 else 4)


_BACKGROUNDS = _BackgroundCache(_BACKGROUND_CACHE_BYTES)


def _background(
    layout: str, n: int, key: str, size: tuple[int, int], template_path: str
) -> tuple[Image.Image, list[_Slot]]:
    """A fresh copy of the picture the captions go on, and where they go (cached)."""
    if template_path:
        try:  # an edited template is a new picture
            st = os.stat(template_path)
            version: tuple[int, ...] = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            raise RenderError(f"cannot read template {template_path}: {exc}") from exc
    else:
        version = ()
    return _BACKGROUNDS.get(
        (layout, n, key, size, template_path, version),
        lambda: _draw_background(layout, n, key, size, template_path),
    )


def _draw_background(
    layout: str, n: int, key: str, size: tuple[int, int], template_path: str
) -> tuple[Image.Image, list[_Slot]]:
    if template_path:
        img = _template(size, template_path)
        return img, _LAYOUT_DRAWERS[layout](img.copy(), n, key)  # slots only: no drawing on it
    img = _scene(size, key, "background")
    return img, _LAYOUT_DRAWERS[layout](img, n, key)


def _template(size: tuple[int, int], path: str) -> Image.Image:
    try:
        with Image.open(path) as src:
            return ImageOps.fit(src.convert("RGB"), size)
    except (OSError, ValueError) as exc:
        raise RenderError(f"cannot read template {path}: {exc}") from exc


def _top_bottom(img: Image.Image, n: int, key: str) -> list[_Slot]:
    """Classic two-caption meme: bands along the top and bottom edges."""
    w, h = img.size
    p, band = _pad(img.size), h // 4
    return [_Slot((p, p, w - p, p + band), "top"), _Slot((p, h - p - band, w - p, h - p), "bottom")]


def _rows(img: Image.Image, n: int, key: str, *, text_left: bool, glow: bool) -> list[_Slot]:
    """Stacked rows, half picture / half caption; shared by the Drake and brain layouts."""
    w, h = img.size
    p, half = _pad(img.size), w // 2
    pic_x, txt_x = (half, 0) if text_left else (0, half)
    txt_w = half if text_left else w - half
    draw = ImageDraw.Draw(img, "RGBA")
    slots = []
    for i in range(n):
        y0, y1 = i * h // n, (i + 1) * h // n
        pic = _scene((w - txt_w, y1 - y0), key, f"panel{i}")
        if glow:
            _draw_glow(pic, i / (n - 1))
        img.paste(pic, (pic_x, y0))
        draw.rectangle((txt_x, y0, txt_x + txt_w, y1), fill=(0, 0, 0, 70))  # calmer text cell
        slots.append(_Slot((txt_x + p, y0 + p, txt_x + txt_w - p, y1 - p)))
    line = max(2, w // 160)
    draw.line((half, 0, half, h), fill="black", width=line)
    for i in range(1, n):
        draw.line((0, i * h // n, w, i * h // n), fill="black", width=line)
    return slots


def _draw_glow(pic: Image.Image, level: float) -> None:
    """A brightening orb whose size grows with ``level`` (0..1), echoing 'expanding brain'."""
    w, h = pic.size
    draw = ImageDraw.Draw(pic, "RGBA")
    r_max = min(w, h) * (0.15 + 0.35 * level)
    for k in range(6):
        r = r_max * (1 - k / 6)
        draw.ellipse((w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r), fill=(255, 245, 190, 45))


def _labels(img: Image.Image, n: int, key: str) -> list[_Slot]:
    """One scene with ``n`` simple figures side by side, each labelled over its body."""
    w, h = img.size
    p = _pad(img.size)
    rng = _rng(key, "labels")
    draw = ImageDraw.Draw(img)
    slots = []
    for i in range(n):
        x0, x1 = i * w // n, (i + 1) * w // n
        cx, col_w = (x0 + x1) / 2, x1 - x0
        head_r = min(col_w * 0.2, h * 0.09)
        head_y = h * rng.uniform(0.2, 0.32)
        draw.ellipse(
            (cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), fill=_colour(rng)
        )
        body_top = head_y + head_r * 1.25
        draw.rounded_rectangle(
            (cx - col_w * 0.34, body_top, cx + col_w * 0.34, h + head_r),
            radius=head_r,
            fill=_colour(rng),
        )
        top = int(body_top + head_r * 0.5)
        slots.append(_Slot((x0 + p, top, x1 - p, min(h - p, top + int(h * 0.3)))))
    return slots


_LAYOUT_DRAWERS: dict[str, Callable[[Image.Image, int, str], list[_Slot]]] = {
    "top_bottom": _top_bottom,
    "two_panel": functools.partial(_rows, text_left=False, glow=False),
    "labels": _labels,
    "multi_panel": functools.partial(_rows, text_left=True, glow=True),
}
