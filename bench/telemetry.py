"""The cost of tracing: ``python -m bench.telemetry [--quick] [--keep]``.

In one run, against one fake OpenAI-compatible server (``memesys.testing.fake_openai``, 100 ms
per completion), it starts two ``python run_system.py`` daemons on free ports, each with a data
dir and embedded Redis of its own: one with tracing off (``OTEL_TRACES_EXPORTER=none``) and one
exporting every span (``otlp``, sampler ``always_on``) over OTLP/HTTP to a local receiver
(``memesys.testing.otlp``, a thread of this process that decodes every export). Both take the
same load, fresh memes from 64 clients (bench.pipeline's load client, a subprocess), in
windows interleaved off/otlp, otlp/off, ... so that a drift of the machine falls on both; it
prints on stdout (progress on stderr):

Each daemon first takes one window of load that is not measured. Then:

1. memes/s, p50 and p99 of each daemon per window, their medians and the memes/s of all windows
   together, the daemon's CPU ms per meme (all of its processes, /proc), and the loss of memes/s
   with tracing on (of the medians);
2. the spans: one meme's trace (the spans of a probe meme), the spans received per meme made
   while exporting against it (every span exported: none dropped), exports refused.

Target: the loss ≤ 10 %. It exits 1 when a target FAILs or a part could not run. See
bench/README.md.
"""

from __future__ import annotations

# First: bench.pipeline, an entry point, sets LITELLM_LOCAL_MODEL_COST_MAP for this process
# before anything imports dspy.
from bench import pipeline  # isort: skip

import argparse
import contextlib
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import commit_description, http_request, median, table, verdict, vm_line
from memesys.testing.otlp import OTLPReceiver

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 64
MAX_LOSS = 0.10
EVERY_SPAN = 0.99  # spans received / (memes made x one meme's spans): nothing dropped
# No new span for this long: every process has exported what it had (longer than the batch
# processor's default schedule delay, 5 s).
SETTLED_S = 6.0
OFF, OTLP = "off", "otlp"


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # each round: one window per daemon
    warmup_s: float
    window_s: float


# Short windows, many of them: the machine is shared, and its load moves within seconds.
FULL = Mode("full", rounds=5, warmup_s=4.0, window_s=10.0)
QUICK = Mode("quick", rounds=2, warmup_s=2.0, window_s=5.0)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"[bench.telemetry] {text}", file=sys.stderr, flush=True)


def tracing_env(exporter: str, endpoint: str) -> dict[str, str]:
    if exporter == OFF:
        return {"OTEL_TRACES_EXPORTER": "none"}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "memesys-bench",
    }


def probe(daemon: pipeline.Daemon, receiver: OTLPReceiver) -> int:
    """The spans of one fresh meme's trace (the daemon exports every span)."""
    status, meme = post(daemon.port, f"telemetry probe {uuid.uuid4().hex[:8]}")
    if status != 201:
        raise RuntimeError(f"the probe meme failed: {status} {meme}")
    spans = receiver.wait_for(meme["trace_id"], settled_s=SETTLED_S, timeout_s=30)
    if not spans:
        raise RuntimeError("no span of the probe meme reached the receiver")
    return len(spans)


def post(port: int, topic: str) -> tuple[int, dict]:
    status, body = http_request(port, "POST", "/v1/memes", {"topic": topic, "fresh": True}, 60)
    return status, body if isinstance(body, dict) else {}


def settle(receiver: OTLPReceiver, max_s: float = 30.0) -> int:
    """The spans received, once none has come for SETTLED_S."""
    deadline = time.monotonic() + max_s
    seen, since = receiver.count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = receiver.count()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLED_S:
            break
    return seen


def made(result: dict) -> int:
    """The memes a load window's client had answered 201, in the window or not."""
    return (
        result["n"]
        + result["completed_outside_window"]
        - sum(result["errors_outside_window"].values())
    )


def header(mode: Mode) -> str:
    now = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    return "\n".join(
        [
            f"memesys telemetry benchmark ({mode.name})  {now}  commit {commit_description(REPO)}",
            vm_line(),
            f"load: fresh memes from {CLIENTS} clients, {mode.rounds} round(s) of a "
            f"{mode.window_s:g} s window per daemon after {mode.warmup_s:g} s of warm-up; "
            f"fake provider {pipeline.FAKE_LATENCY_S * 1000:.0f} ms per completion",
            "daemons: "
            + " ".join(f"{k}={v}" for k, v in pipeline.BENCH_ENV.items())
            + "; off: OTEL_TRACES_EXPORTER=none; otlp: OTEL_TRACES_EXPORTER=otlp "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_TRACES_SAMPLER=always_on "
            "(batch processor defaults) to a receiver in the bench's process",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.telemetry", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of shorter windows")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args(argv)
    return orchestrate(QUICK if args.quick else FULL, args.keep)


def orchestrate(mode: Mode, keep: bool) -> int:
    run = pipeline._run_helpers()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-telemetry-"))
    say(header(mode))
    say()
    failed: list[str] = []
    leftovers: dict[str, list[int]] = {}
    started: list[int] = []
    results: dict[str, list[dict]] = {OFF: [], OTLP: []}
    cpu_ms: dict[str, list[float]] = {OFF: [], OTLP: []}
    with contextlib.ExitStack() as cleanup:
        receiver = cleanup.enter_context(OTLPReceiver())
        note(f"work dir {workdir}; OTLP receiver at {receiver.url}")
        fake = pipeline.Fake(workdir)
        cleanup.callback(run.stop_process, fake.proc)
        started.append(fake.proc.pid)
        fake_url = fake.wait_ready()
        daemons = {
            name: pipeline.Daemon(
                "parallel", fake_url, workdir, name, tracing_env(name, receiver.url)
            ).start()
            for name in (OFF, OTLP)
        }
        for daemon in daemons.values():
            cleanup.callback(daemon.stop)
            started.append(daemon.proc.pid)
        try:
            for daemon in daemons.values():
                daemon.wait_ready()
                note(f"{daemon.name} daemon pid {daemon.proc.pid} ready on port {daemon.port}")
            per_meme = probe(daemons[OTLP], receiver)
        except Exception:
            failed.append("start")
            say(f"start: FAILED\n{traceback.format_exc()}")
            per_meme = 0
        received = memes_otlp = off_spans = 0
        if not failed:
            try:
                for name in (OFF, OTLP):  # the first load of a daemon is slower: not measured
                    note(f"warming up the {name} daemon: {mode.warmup_s + mode.window_s:g} s")
                    pipeline.run_client(
                        daemons[name].port, CLIENTS, mode.warmup_s, mode.window_s, workdir, cleanup
                    )
                before = settle(receiver)
                for r in range(mode.rounds):
                    order = (OFF, OTLP) if r % 2 == 0 else (OTLP, OFF)
                    for name in order:
                        daemon = daemons[name]
                        meter = pipeline.CpuMeter(dict.fromkeys(daemon.roles(), "daemon"))
                        note(f"round {r + 1}: {name}, {CLIENTS} clients")
                        result = pipeline.run_client(
                            daemon.port,
                            CLIENTS,
                            mode.warmup_s,
                            mode.window_s,
                            workdir,
                            cleanup,
                            meter,
                            name,
                        )
                        results[name].append(result)
                        cpu_ms[name].append(result["cpu_s"]["daemon"] * 1000 / max(1, result["n"]))
                        if name == OTLP:
                            memes_otlp += made(result)
                received = settle(receiver) - before
                off_pids = set(daemons[OFF].roles())  # tracing off: none of its spans is sent
                off_spans = sum(1 for span in list(receiver.spans) if span.pid in off_pids)
            except Exception:
                failed.append("load")
                say(f"load: FAILED\n{traceback.format_exc()}")
        if not failed:
            say(report(mode, results, cpu_ms, per_meme, received, memes_otlp, receiver, off_spans))
        for name, daemon in daemons.items():
            leftovers[f"{name} daemon"] = daemon.stop()
        leftovers["fake server"] = fake.stop()
    say(pipeline.leftovers_check(started, leftovers))
    verdict_code = 1 if failed or any(leftovers.values()) else 0
    if not failed:
        verdict_code = max(
            verdict_code, 0 if passed(results, per_meme, received, memes_otlp, off_spans) else 1
        )
    if keep:
        note(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return verdict_code


def loss(results: dict[str, list[dict]]) -> float:
    off = median(r["rate"] for r in results[OFF])
    on = median(r["rate"] for r in results[OTLP])
    return 1 - on / off if off > 0 else float("nan")


def exact(received: int, expected: int) -> bool:
    """Every span exported, and no more: within EVERY_SPAN of what the memes made."""
    return expected > 0 and EVERY_SPAN <= received / expected <= 2 - EVERY_SPAN


def passed(
    results: dict[str, list[dict]], per_meme: int, received: int, memes: int, off_spans: int
) -> bool:
    every_span = exact(received, per_meme * memes)
    return loss(results) <= MAX_LOSS and every_span and off_spans == 0


def report(
    mode: Mode,
    results: dict[str, list[dict]],
    cpu_ms: dict[str, list[float]],
    per_meme: int,
    received: int,
    memes_otlp: int,
    receiver: OTLPReceiver,
    off_spans: int,
) -> str:
    rows = []
    for name in (OFF, OTLP):
        for i, r in enumerate(results[name]):
            errors = sum(r["errors"].values())
            rows.append(
                [
                    f"{name} window {i + 1}",
                    r["rate"],
                    r["p50_ms"],
                    r["p99_ms"],
                    errors,
                    cpu_ms[name][i],
                ]
            )
        rows.append(
            [
                f"{name} median",
                median(r["rate"] for r in results[name]),
                median(r["p50_ms"] for r in results[name]),
                median(r["p99_ms"] for r in results[name]),
                "",
                median(cpu_ms[name]),
            ]
        )
        memes = sum(r["n"] for r in results[name])
        cpu_s = sum(ms * r["n"] / 1000 for ms, r in zip(cpu_ms[name], results[name]))
        window_s = sum(r["window_s"] for r in results[name])
        rows.append(
            [f"{name} all windows", memes / window_s, "", "", "", cpu_s * 1000 / max(1, memes)]
        )
    lost = loss(results)
    expected = per_meme * memes_otlp
    ratio = received / expected if expected else float("nan")
    lines = [
        table(
            f"1. fresh memes at {CLIENTS} clients, tracing off and every span exported over OTLP",
            ["daemon", "memes/s", "p50 ms", "p99 ms", "errors", "CPU ms/meme"],
            rows,
            1,
        ),
        "",
        f"loss of memes/s with tracing on: {lost * 100:.1f} %",
        f"target: loss <= {MAX_LOSS * 100:.0f} %: {verdict(lost <= MAX_LOSS)}",
        "",
        table(
            "2. spans",
            ["what", "value"],
            [
                ["spans of one meme (probe)", per_meme],
                ["memes made by the otlp daemon in the windows", memes_otlp],
                ["spans received from them", received],
                ["received / expected", ratio],
                ["exports received / refused", f"{receiver.exports} / {receiver.refused}"],
                ["spans from the off daemon", off_spans],
            ],
            3,
        ),
        f"target: every span exported (received / expected within {1 - EVERY_SPAN:.0%} of 1): "
        f"{verdict(exact(received, expected))}",
        f"check: tracing off exports nothing: {verdict(off_spans == 0)}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    sys.exit(main())
