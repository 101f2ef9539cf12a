"""CPU of ``render_png`` per format: ``python -m bench.profile_render [--quick] [--reps N]``.

Prints the median over the formats of the CPU ms (process time) a PNG takes, "warm" (its
``background_key`` was drawn before: the daemon's key is ``<format>:<seed>``, so a repeated
format hits the background cache) and "cold" (a new key every call), and the PNG sizes. The
figures of the render work are in docs/perf/2026-11-30-render-cpu-profile.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.profile_captions import formats
from memesys.render.image import render_png


def cpu_ms(layout: str, texts: list[str], key: str) -> tuple[float, bytes]:
    began = time.process_time()
    png = render_png(layout, texts, background_key=key)
    return (time.process_time() - began) * 1000, png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.profile_render", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--reps", type=int, default=7, help="renders per format and kind (default 7)"
    )
    parser.add_argument("--quick", action="store_true", help="6 formats, 2 renders each")
    args = parser.parse_args(argv)
    count, reps = (6, 2) if args.quick else (None, args.reps)
    warm: list[float] = []
    cold: list[float] = []
    sizes: list[int] = []
    for fmt, texts in formats(count):
        _, png = cpu_ms(fmt.layout, texts, f"{fmt.name}:0")  # draws the background
        warm.append(
            statistics.median(cpu_ms(fmt.layout, texts, f"{fmt.name}:0")[0] for _ in range(reps))
        )
        cold.append(
            statistics.median(
                cpu_ms(fmt.layout, texts, f"{fmt.name}:{r}")[0] for r in range(1, reps + 1)
            )
        )
        sizes.append(len(png))
    m = statistics.median
    print(
        f"{len(warm)} formats: warm ms median {m(warm):.1f} max {max(warm):.1f} | cold ms median "
        f"{m(cold):.1f} max {max(cold):.1f} | PNG KB (key <format>:0) median {m(sizes) / 1024:.1f} "
        f"mean {statistics.mean(sizes) / 1024:.1f} max {max(sizes) / 1024:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
