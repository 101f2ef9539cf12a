"""Render worker CPU under Thespian: ``python -m bench.profile_hop [--quick] [--reps N]``.

Starts an actor system (``multiprocTCPBase`` on a free loopback port) with a real
``RenderWorker`` and the two stand-ins of ``bench.profile_hop_actors`` around it: a relay doing a
generator's part (asks for the render, gets the PNG, sends it on in a ``SaveMeme``) and a sink
doing a store's (answers it). After a warm-up round (backgrounds drawn, fonts loaded) it renders
every format ``--reps`` times, one at a time, and prints the user + system CPU per meme of each of
the three processes (psutil). The actor system is shut down before it exits. The figures of
the render work are in docs/perf/2026-11-30-render-cpu-profile.md.
"""

from __future__ import annotations

import argparse
import socket
import statistics

import psutil
from thespian.actors import ActorSystem

from actors.messages import Init, Ping, Request
from actors.system import harden_bind, initialized, logging_config
from bench.profile_captions import formats
from bench.profile_hop_actors import GO, PID, SETUP, Relay, Sink
from memesys.domain.messages import RenderMeme
from memesys.render.meme import RenderSettings
from memesys.tree.renderer import RenderWorker

MEME = {
    "id": "01HX" * 6,
    "topic": "when the build passes",
    "texts": {"a": "x" * 60, "b": "y" * 60},
    "scores": {k: 0.5 for k in "abcdef"},
    "timings": {f"s{i}": 1.5 for i in range(12)},
}
ASK_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def measure(asys: ActorSystem, port: int, count: int | None, reps: int) -> str:
    worker = asys.createActor(RenderWorker)
    initialized(asys, worker, Init("render-1", RenderSettings(), port), ASK_S)
    relay, sink = asys.createActor(Relay), asys.createActor(Sink)
    asys.ask(relay, (SETUP, worker, sink), ASK_S)
    pids = {
        "render worker": asys.ask(worker, Request(Ping()), ASK_S).payload.pid,
        "relay (generator's part)": asys.ask(relay, PID, ASK_S),
        "sink (store's part)": asys.ask(sink, PID, ASK_S),
    }
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    orders = [
        RenderMeme(f.name, f.layout, tuple(texts), f"{f.name}:0") for f, texts in formats(count)
    ]
    for order in orders:  # warm-up: backgrounds drawn, fonts loaded
        asys.ask(relay, (GO, order, MEME), ASK_S)
    before = {name: cpu_s(p) for name, p in procs.items()}
    sizes = [asys.ask(relay, (GO, order, MEME), ASK_S) for _ in range(reps) for order in orders]
    if not all(isinstance(size, int) for size in sizes):
        raise RuntimeError(f"a render failed: {sizes[:3]}")
    per_meme = ", ".join(
        f"{name} {(cpu_s(p) - before[name]) / len(sizes) * 1000:.2f}" for name, p in procs.items()
    )
    size_kb = statistics.median(sizes) / 1024
    return f"{len(sizes)} memes, PNG median {size_kb:.1f} KB: {per_meme} CPU ms per meme"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile_hop", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="rounds over the formats (default 5)")
    parser.add_argument("--quick", action="store_true", help="6 formats, 1 round")
    args = parser.parse_args(argv)
    count, reps = (6, 1) if args.quick else (None, args.reps)
    port = free_port()
    harden_bind("127.0.0.1")
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, logDefs=logging_config("WARNING"))
    try:
        print(measure(asys, port, count, reps))
    finally:
        asys.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
