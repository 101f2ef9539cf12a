"""What Thespian formats per message hop: ``python -m bench.profile_identify [--quick]``.

On every hop Thespian evaluates the arguments of DEBUG lines it then drops (its threshold is
WARNING): the sender's ``TransmitIntent.identify()`` twice, the receiver's
``ReceiveEnvelope.identify()`` once. ``actors.thespian_adapter.cheap_message_descriptions``
makes them lazy (built only if a line is written); this prints, per message, the microseconds
of those three calls as a hop makes them, against pickling the message (which the hop needs).
Median of ``--reps`` hops. Thespian's own methods cost milliseconds for a message carrying a
PNG: the figures before and after the patch are in docs/perf/2026-11-30-render-cpu-profile.md.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorAddress
from thespian.system import transport

from actors.messages import Reply, Request
from actors.thespian_adapter import cheap_message_descriptions
from memesys.domain.messages import RenderMeme
from memesys.pipeline.making import SaveMeme

PNG = bytes(range(256)) * 400  # 100 KB, about a PNG of the render's encoder
MEME = {
    "id": "01HX" * 6,
    "topic": "t" * 80,
    "texts": {"a": "x" * 60, "b": "y" * 60},
    "scores": {k: 0.5 for k in "abcdef"},
    "timings": {f"s{i}": 1.5 for i in range(12)},
}
MESSAGES = [
    ("Request(RenderMeme)", Request(RenderMeme("drake", "two_panel", ("a", "b"), "drake:0"))),
    ("Reply(100 KB PNG)", Reply("c" * 32, PNG)),
    ("Request(SaveMeme(meme, 100 KB PNG))", Request(SaveMeme(MEME, PNG, "key"))),
    ("Request(SaveMeme(meme, 300 KB PNG))", Request(SaveMeme(MEME, PNG * 3, "key"))),
]


def median_us(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e6)
    return statistics.median(times)


def hop(message: Any) -> Callable[[], None]:
    """The three ``identify()`` calls of one hop, their lines dropped as Thespian drops them."""
    addr = ActorAddress("bench")

    def run() -> None:
        intent = transport.TransmitIntent(addr, message)
        intent.identify()
        intent.identify()
        transport.ReceiveEnvelope(addr, message).identify()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.profile_identify", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--reps", type=int, default=200, help="hops per message (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 hops per message")
    args = parser.parse_args(argv)
    reps = 20 if args.quick else args.reps
    cheap_message_descriptions()  # idempotent: as every actor process has it
    for name, message in MESSAGES:
        described = median_us(hop(message), reps)
        copied = median_us(lambda m=message: pickle.loads(pickle.dumps(m, 3)), reps)
        print(f"{name:38s} identify x3 {described:9.1f} us   pickle+unpickle {copied:6.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
