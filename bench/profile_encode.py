"""PNG encoders compared on the formats' images: ``python -m bench.profile_encode [--quick]``.

The images are the formats' 640x640 renders (decoded from ``render_png``: the same pixels the
daemon encodes). For each encoder: CPU ms per PNG (process time, median of ``--reps`` encodes of
an image, then median and max over the images), the mean size, and the largest pixel error after
decoding (0: lossless). The encoders: Pillow's at several levels, the render's own
(``memesys.render.image._encode_png``: Up filter, ISA-L deflate) at its level and, for
comparison, with zlib in place of ISA-L, and a 256-colour palette. The choice these figures made
is in docs/perf/2026-11-30-render-cpu-profile.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image, ImageChops

from bench.profile_captions import formats
from memesys.render import image

Encoder = Callable[[Image.Image], bytes]


@contextlib.contextmanager
def patched(module: Any, **values: Any) -> Iterator[None]:
    """Set attributes of ``module`` for the duration of the block."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def pillow(**options: Any) -> Encoder:
    def encode(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG", **options)
        return buf.getvalue()

    return encode


def up_filter(level: int, deflate: Any = None) -> Encoder:
    """The render's encoder at ``level``, with ``deflate`` (a module with zlib's ``compress``)
    in place of ISA-L when given."""

    def encode(img: Image.Image) -> bytes:
        swaps = {"_PNG_DEFLATE_LEVEL": level} | ({"isal_zlib": deflate} if deflate else {})
        with patched(image, **swaps):
            return image._encode_png(img)

    return encode


def palette(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        buf, "PNG", compress_level=1
    )
    return buf.getvalue()


ENCODERS: list[tuple[str, Encoder]] = [
    ("Pillow level 6 (its default)", pillow(optimize=False)),
    ("Pillow level 1", pillow(compress_level=1)),
    ("Pillow level 4", pillow(compress_level=4)),
    ("Pillow level 9", pillow(compress_level=9)),
    ("Pillow level 6 optimize", pillow(optimize=True)),
    (
        f"Up filter + ISA-L level {image._PNG_DEFLATE_LEVEL} (the render's)",
        up_filter(image._PNG_DEFLATE_LEVEL),
    ),
    *[(f"Up filter + zlib level {lv}", up_filter(lv, zlib)) for lv in (1, 2, 3, 4, 6)],
    ("palette 256 (fastoctree) level 1", palette),
]
SLOW = {"Pillow level 9", "Pillow level 6 optimize"}  # ~100 ms a PNG: left out of --quick


def measure(
    encode: Encoder, images: list[Image.Image], reps: int
) -> tuple[list[float], float, int]:
    """CPU ms per image (median of ``reps``), mean KB, largest pixel error."""
    ms: list[float] = []
    kb: list[float] = []
    err = 0
    for img in images:
        times = []
        for _ in range(reps):
            began = time.process_time()
            data = encode(img)
            times.append((time.process_time() - began) * 1000)
        ms.append(statistics.median(times))
        kb.append(len(data) / 1024)
        back = Image.open(io.BytesIO(data)).convert("RGB")
        err = max(err, max(hi for _, hi in ImageChops.difference(img, back).getextrema()))
    return ms, statistics.mean(kb), err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.profile_encode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--reps", type=int, default=5, help="encodes per image (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="6 formats, 2 encodes each, no slow encoder"
    )
    args = parser.parse_args(argv)
    count, reps = (6, 2) if args.quick else (None, args.reps)
    images = [
        Image.open(
            io.BytesIO(image.render_png(f.layout, texts, background_key=f"{f.name}:0"))
        ).convert("RGB")
        for f, texts in formats(count)
    ]
    print(f"{len(images)} images, {reps} encodes each")
    for name, encode in ENCODERS:
        if args.quick and name in SLOW:
            continue
        ms, kb, err = measure(encode, images, reps)
        print(
            f"{name:48s} {statistics.median(ms):6.1f} ms (max {max(ms):5.1f})  {kb:6.1f} KB  "
            f"max pixel error {err}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
