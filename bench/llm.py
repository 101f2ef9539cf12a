"""The LLM client layer benchmark: ``python -m bench.llm [--quick] [--uncommitted]``.

It starts the fake OpenAI-compatible server (``python -m memesys.testing.fake_openai``, no added
latency) in a process of its own and, for the client layer, an embedded Redis (the layer shares
its limiter and breaker through Redis), then prints plain-text tables on stdout (progress goes
to stderr):

1. added latency: sequential calls, a bare call (a pooled urllib3 connection pool posting the
   same chat body and reading its JSON, the HTTP library the layer uses) and a call through the
   client layer's entry point (the transport DSPy is given, ``complete(Request) -> Response``),
   interleaved one for one against the same fake in the same run; p50/p90/p99 of each and the
   difference of the p50s. Target: **<= 1 ms p50 added**.
2. throughput at the configured limit: ``CALLERS`` threads call the layer back to back with
   ``[llm] rate_limit_rps`` = ``LIMIT_RPS`` (Redis-shared) for the window; the rate is counted
   at the fake server (the arrival time of every attempt, ``GET /_fake/stats?arrivals=1``).
   Targets: **>= 95 % of the limit**, and not above it (<= limit + 5 %, no 1-second window
   above 1.5 x the limit), so that the figure means the limiter, not a missing one. The bare
   baseline (the same callers with no layer) shows what the fake serves unlimited.

The client layer is measured only as committed: if ``memesys/llm`` is not in HEAD (or has no
rate limit yet), its rows say "not measured" and the bench exits 1 (an honest FAIL).
``--uncommitted`` measures whatever the working tree holds, and the header says so.
Exit 0 only when every target passes. See bench/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import contextlib
import dataclasses
import datetime
import inspect
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import commit_description, median, percentile, table, verdict, vm_line
from memesys.testing.fake_openai import SELECT_MESSAGES

REPO = Path(__file__).resolve().parent.parent
MODEL = "fake-model"
API_KEY = "test-key"
LAYER_PATH = "memesys/llm"

# Targets.
ADDED_P50_MS = 1.0  # client p50 - bare p50, sequential calls
THROUGHPUT_SHARE = 0.95  # rate at the fake / limit, many callers
OVER_SHARE = 0.05  # ... and at most limit x (1 + OVER_SHARE)
WINDOW_PEAK = 1.5  # no 1-second window above this x the limit

LIMIT_RPS = 50
CALLERS = 64
# Table 1 runs the layer with a limit it never reaches, so the limiter's work is in the
# measured latency without its waits.
LATENCY_LIMIT_RPS = 100_000
CALL_DEADLINE_S = 30.0  # each call's deadline (a request's), as the tree would set it

BODY = {"model": MODEL, "messages": list(SELECT_MESSAGES)}  # the offline writer answers it


@dataclass(frozen=True)
class Mode:
    name: str
    warmup_pairs: int
    rounds: int  # table 1: rounds of `pairs`; the table shows medians over rounds
    pairs: int
    bare_s: float  # table 2: the unlimited bare window
    warmup_s: float  # table 2: before the limited window opens
    window_s: float


FULL = Mode("full", warmup_pairs=200, rounds=5, pairs=400, bare_s=5.0, warmup_s=2.0, window_s=10.0)
QUICK = Mode("quick", warmup_pairs=100, rounds=1, pairs=300, bare_s=2.0, warmup_s=1.0, window_s=5.0)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"[bench.llm] {text}", file=sys.stderr, flush=True)


# -- the fake server and Redis ------------------------------------------------------------------


class Fake:
    """``python -m memesys.testing.fake_openai`` on a free port, in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.log = open(workdir / "fake.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memesys.testing.fake_openai",
                "--port",
                "0",
                "--api-key",
                API_KEY,
                "--model",
                MODEL,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("fake-openai ready at "):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r} (see fake.log)")
        self.url = line.removeprefix("fake-openai ready at ")

    def stats(self, arrivals: bool = False) -> dict[str, Any]:
        query = "?arrivals=1" if arrivals else ""
        with urllib.request.urlopen(
            f"{self.url.removesuffix('/v1')}/_fake/stats{query}", timeout=10
        ) as resp:
            return json.loads(resp.read())

    def stop(self) -> int | None:
        """SIGTERM by pid, wait, SIGKILL by pid if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                note(f"fake pid {self.proc.pid} ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# -- the two ways to call -----------------------------------------------------------------------


def bare_caller(url: str, connections: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(call, close): a POST of BODY with a pooled keep-alive urllib3 pool, JSON read back."""
    import urllib3

    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(
        parts.hostname, parts.port, maxsize=connections, block=True, retries=False
    )
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    path = parts.path.rstrip("/") + "/chat/completions"

    def call() -> Any:
        answer = pool.urlopen(
            "POST",
            path,
            body=json.dumps(BODY).encode(),
            headers=headers,
            timeout=30.0,
            retries=False,
            redirect=False,
        )
        if answer.status != 200:
            raise RuntimeError(f"the fake answered {answer.status}")
        return json.loads(answer.data)

    return call, pool.close


def layer_in_head() -> bool:
    """Whether HEAD holds the client layer (tracked files under memesys/llm); outside a git
    checkout (a ``git archive`` of one commit), whether the files are there."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO:
            return (REPO / LAYER_PATH / "transport.py").exists()
        listed = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", "HEAD", LAYER_PATH],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(listed.strip())


class LayerMissing(Exception):
    """The client layer (or the part of it a table needs) is not there: not measured."""


def layer_caller(url: str, rps: int | None, redis_url: str) -> tuple[Callable[[], Any], str]:
    """(call, description): one call through the client layer's entry point, with
    ``[llm] rate_limit_rps`` = rps (None: the layer's default) and its state in ``redis_url``.

    The entry point is the transport DSPy is given (``memesys.llm.transport.HardenedTransport``, the
    ``complete(Request) -> Response`` protocol), built from the daemon's own ``[llm]`` config
    (every field of its Policy that the config has), with the request's deadline set the way
    the tree sets it (``actors.deadlines.serving``).
    """
    try:
        from dspy.lm15 import request_from_openai_chat

        from actors import deadlines
        from memesys.config import ConfigError, load
        from memesys.llm.transport import HardenedTransport, Policy
    except ImportError as exc:
        raise LayerMissing(f"the client layer is not importable ({exc})") from exc
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": url,
        "MEMESYS_LLM_MODEL": MODEL,
        "REDIS_URL": redis_url,
    }
    if rps is not None:
        env["MEMESYS_LLM_RATE_LIMIT_RPS"] = str(rps)
    try:
        cfg = load(env=env)
    except ConfigError as exc:
        if "rate_limit_rps" in str(exc):
            raise LayerMissing(
                "the client layer in this commit has no rate limit "
                "([llm] rate_limit_rps is not a key of its config)"
            ) from exc
        raise
    llm = cfg.llm
    names = {f.name for f in dataclasses.fields(Policy)}
    knobs = {name: getattr(llm, name) for name in names if hasattr(llm, name)}
    extra: dict[str, Any] = {}
    if "redis_url" in names:
        knobs["redis_url"] = redis_url
    elif "redis_url" in inspect.signature(HardenedTransport).parameters:
        extra["redis_url"] = redis_url
    policy = Policy(**knobs)
    transport = HardenedTransport(MODEL, API_KEY, url, policy, **extra)
    request = request_from_openai_chat(BODY)

    def call() -> Any:
        with deadlines.serving(time.time() + CALL_DEADLINE_S):
            return transport.complete(request)

    shown = ", ".join(
        f"{k}=" + ("<embedded Redis>" if k == "redis_url" else str(getattr(policy, k)))
        for k in sorted(names)
    )
    redis_shown = ", redis_url=<embedded Redis>" if extra else ""
    return call, f"HardenedTransport({MODEL}, Policy({shown}){redis_shown})"


# -- table 1: added latency ---------------------------------------------------------------------


def pairs(bare: Callable[[], Any], layer: Callable[[], Any], n: int) -> tuple[list, list]:
    """n interleaved (bare, layer) calls, the order alternating; latencies in ms."""
    got_bare: list[float] = []
    got_layer: list[float] = []
    for i in range(n):
        order = ((bare, got_bare), (layer, got_layer))
        for call, into in order if i % 2 == 0 else order[::-1]:
            began = time.perf_counter()
            call()
            into.append((time.perf_counter() - began) * 1000)
    return got_bare, got_layer


def table1(
    fake: Fake, mode: Mode, layer: Callable[[], Any] | None, why_not: str, described: str
) -> tuple[list[str], bool]:
    bare, close = bare_caller(fake.url, 8)
    try:
        if layer is None:
            for _ in range(mode.warmup_pairs):
                bare()
            rounds = []
            for _ in range(mode.rounds):
                got = []
                for _ in range(mode.pairs):
                    began = time.perf_counter()
                    bare()
                    got.append((time.perf_counter() - began) * 1000)
                rounds.append((got, []))
        else:
            pairs(bare, layer, mode.warmup_pairs)
            rounds = [pairs(bare, layer, mode.pairs) for _ in range(mode.rounds)]
    finally:
        close()
    stat = {q: [percentile(r[0], q) for r in rounds] for q in (50, 90, 99)}
    bare_p = {q: median(v) for q, v in stat.items()}
    rows = [
        [
            "bare (pooled urllib3, same body)",
            mode.rounds * mode.pairs,
            bare_p[50],
            bare_p[90],
            bare_p[99],
            "-",
        ]
    ]
    lines = []
    ok = False
    if layer is None:
        rows.append(["client layer", 0, "not measured", "-", "-", "-"])
        lines.append(f"not measured: {why_not}")
        lines.append(
            f"target: client layer p50 - bare p50 <= {ADDED_P50_MS:g} ms   not measured   FAIL"
        )
    else:
        layer_p = {q: median([percentile(r[1], q) for r in rounds]) for q in (50, 90, 99)}
        added = median([percentile(r[1], 50) - percentile(r[0], 50) for r in rounds])
        rows.append(
            ["client layer", mode.rounds * mode.pairs, layer_p[50], layer_p[90], layer_p[99], added]
        )
        ok = added <= ADDED_P50_MS
        lines.append(f"client layer: {described}")
        lines.append(
            f"target: client layer p50 - bare p50 <= {ADDED_P50_MS:g} ms   measured "
            f"{layer_p[50]:.3f} - {bare_p[50]:.3f} = {added:.3f} ms   {verdict(ok)}"
        )
        if mode.rounds > 1:
            per = ", ".join(f"{percentile(r[1], 50) - percentile(r[0], 50):.3f}" for r in rounds)
            lines.append(f"added p50 per round (ms): {per}")
    title = (
        f"1. Added latency: {mode.rounds} x {mode.pairs} sequential calls of each kind, "
        "interleaved, fake latency 0 (ms; medians over rounds)"
    )
    text = table(title, ["call", "calls", "p50", "p90", "p99", "added p50"], rows, digits=3)
    return [text, *lines], ok


# -- table 2: throughput at the limit -----------------------------------------------------------


def hammer(
    call: Callable[[], Any], callers: int, warmup_s: float, window_s: float
) -> dict[str, Any]:
    """``callers`` threads call back to back for warmup + window; returns the window's
    bounds (time.time()), completions and failures by kind."""
    stop = threading.Event()
    lock = threading.Lock()
    ends: list[float] = []
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}

    def worker() -> None:
        while not stop.is_set():
            try:
                call()
            except Exception as exc:  # counted, by kind
                kind = getattr(exc, "code", None) or type(exc).__name__
                kind = getattr(kind, "value", kind)
                with lock:
                    errors[str(kind)] += 1
                    examples.setdefault(str(kind), str(exc)[:200])
                continue
            with lock:
                ends.append(time.time())

    threads = [
        threading.Thread(target=worker, name=f"bench-llm-{i}", daemon=True) for i in range(callers)
    ]
    began = time.time()
    for thread in threads:
        thread.start()
    opens = began + warmup_s
    closes = opens + window_s
    time.sleep(max(0.0, closes - time.time()))
    stop.set()
    for thread in threads:
        thread.join(CALL_DEADLINE_S + 5)
    alive = sum(thread.is_alive() for thread in threads)
    done = [t for t in ends if opens <= t < closes]
    return {
        "opens": opens,
        "closes": closes,
        "completed": len(done),
        "errors": errors,
        "examples": examples,
        "alive": alive,
    }


def peak_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any [t, t + width)."""
    times = sorted(times)
    best = low = 0
    for high, t in enumerate(times):
        while times[low] <= t - width:
            low += 1
        best = max(best, high - low + 1)
    return best


def table2(
    fake: Fake, mode: Mode, layer_for: Callable[[int], Callable[[], Any]] | None, why_not: str
) -> tuple[list[str], bool]:
    note(f"table 2: bare, {CALLERS} callers, {mode.bare_s:g} s unlimited")
    bare, close = bare_caller(fake.url, CALLERS)
    try:
        got = hammer(bare, CALLERS, 0.5, mode.bare_s)
    finally:
        close()
    arrivals = [
        t for t in fake.stats(arrivals=True)["arrivals"] if got["opens"] <= t < got["closes"]
    ]
    rows = [
        [
            "bare, no limit",
            CALLERS,
            mode.bare_s,
            len(arrivals) / mode.bare_s,
            got["completed"] / mode.bare_s,
            peak_window(arrivals),
            "-",
            sum(got["errors"].values()),
        ]
    ]
    lines: list[str] = []
    ok = False
    limited: Callable[[], Any] | None = None
    if layer_for is not None:
        try:
            limited = layer_for(LIMIT_RPS)
        except LayerMissing as exc:
            why_not = str(exc)
    if limited is None:
        rows.append(
            [
                f"client layer, limit {LIMIT_RPS}/s",
                CALLERS,
                mode.window_s,
                "not measured",
                "-",
                "-",
                "-",
                "-",
            ]
        )
        lines.append(f"not measured: {why_not}")
        lines.append(
            f"target: rate at the fake >= {THROUGHPUT_SHARE:.0%} of the limit "
            f"{LIMIT_RPS}/s   not measured   FAIL"
        )
    else:
        note(
            f"table 2: client layer, limit {LIMIT_RPS}/s, {CALLERS} callers, "
            f"{mode.warmup_s:g} s warm-up + {mode.window_s:g} s"
        )
        got = hammer(limited, CALLERS, mode.warmup_s, mode.window_s)
        arrivals = [
            t for t in fake.stats(arrivals=True)["arrivals"] if got["opens"] <= t < got["closes"]
        ]
        rate = len(arrivals) / mode.window_s
        peak = peak_window(arrivals)
        errors = got["errors"]
        rows.append(
            [
                f"client layer, limit {LIMIT_RPS}/s",
                CALLERS,
                mode.window_s,
                rate,
                got["completed"] / mode.window_s,
                peak,
                rate / LIMIT_RPS,
                sum(errors.values()),
            ]
        )
        low_ok = rate >= THROUGHPUT_SHARE * LIMIT_RPS
        high_ok = rate <= LIMIT_RPS * (1 + OVER_SHARE) and peak <= WINDOW_PEAK * LIMIT_RPS
        ok = low_ok and high_ok
        lines.append(
            f"target: rate at the fake >= {THROUGHPUT_SHARE:.0%} of the limit "
            f"{LIMIT_RPS}/s = {THROUGHPUT_SHARE * LIMIT_RPS:g}   measured {rate:.2f} "
            f"({rate / LIMIT_RPS:.1%})   {verdict(low_ok)}"
        )
        lines.append(
            f"target: not above the limit: rate <= {LIMIT_RPS * (1 + OVER_SHARE):g} "
            f"and no 1-s window above {WINDOW_PEAK * LIMIT_RPS:g}   measured "
            f"{rate:.2f}, peak {peak}   {verdict(high_ok)}"
        )
        if errors:
            lines.append(
                "failed calls by kind: "
                + ", ".join(f"{kind} {n}" for kind, n in errors.most_common())
            )
            for kind, text in sorted(got["examples"].items()):
                lines.append(f"first message of {kind}: {text}")
        if got["alive"]:
            lines.append(f"warning: {got['alive']} caller threads still running after the join")
            ok = False
    title = (
        f"2. Throughput at the limit: {CALLERS} caller threads back to back; rate counted "
        "at the fake server (every attempt), completed counted by the callers"
    )
    text = table(
        title,
        [
            "calls",
            "callers",
            "window s",
            "req/s at fake",
            "completed/s",
            "peak 1-s",
            "of limit",
            "failed",
        ],
        rows,
    )
    return [text, *lines], ok


# -- orchestration ------------------------------------------------------------------------------


def header(mode: Mode, measured: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"memesys LLM client layer benchmark ({mode.name})  {now} UTC  commit "
        f"{commit_description(REPO)}\n"
        f"{vm_line()}\nclient layer: {measured}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.llm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 20 s)")
    parser.add_argument(
        "--uncommitted",
        action="store_true",
        help="measure the client layer as the working tree holds it, even "
        "when memesys/llm is not committed",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (fake.log)")
    args = parser.parse_args(argv)
    return run(QUICK if args.quick else FULL, args.uncommitted, args.keep)


def run(mode: Mode, uncommitted: bool, keep: bool) -> int:
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    in_head = layer_in_head()
    why_not = ""
    if not in_head and not uncommitted:
        why_not = "the client layer is not in this commit (memesys/llm is not in HEAD)"
        measured = "not measured: " + why_not
    elif not in_head:
        measured = "the working tree's memesys/llm (NOT committed: --uncommitted)"
    else:
        measured = "memesys/llm as committed"
    say(header(mode, measured))
    say()
    results: list[bool] = []
    with contextlib.ExitStack() as cleanup:
        fake = Fake(workdir)
        cleanup.callback(lambda: note(f"fake server exited with {fake.stop()}"))
        note(f"fake server at {fake.url} (pid {fake.proc.pid})")
        redis_url = ""
        latency_layer = None
        layer_for: Callable[[int], Callable[[], Any]] | None = None
        described = ""
        if not why_not:
            from memesys.storage.connection import resolve

            target, embedded = resolve("", str(workdir / "redis"))
            if embedded is not None:
                cleanup.callback(embedded.stop)
            redis_url = target.url
            built: dict[int, tuple[Callable[[], Any], str]] = {}

            def layer_for(rps: int) -> Callable[[], Any]:
                if rps not in built:
                    built[rps] = layer_caller(fake.url, rps, redis_url)
                return built[rps][0]

            latency_layer: Callable[[], Any] | None = None
            try:
                latency_layer = layer_for(LATENCY_LIMIT_RPS)
                described = built[LATENCY_LIMIT_RPS][1]
            except LayerMissing as exc:
                try:  # no limiter yet: the rest of the layer can still be timed
                    latency_layer, described = layer_caller(fake.url, None, redis_url)
                    described += f" (no rate limit: {exc})"
                except LayerMissing as again:
                    why_not, layer_for = str(again), None

        for name, part in (
            (
                "1. added latency",
                lambda: table1(
                    fake, mode, latency_layer if layer_for else None, why_not, described
                ),
            ),
            ("2. throughput at the limit", lambda: table2(fake, mode, layer_for, why_not)),
        ):
            note(name)
            try:
                lines, ok = part()
            except LayerMissing as exc:
                lines, ok = [f"{name}: not measured: {exc}", "FAIL"], False
            except Exception:
                lines, ok = [f"{name}: could not run:", traceback.format_exc()], False
            for line in lines:
                say(line)
            say()
            results.append(ok)
    stray = [t.name for t in threading.enumerate() if t.name.startswith("bench-llm-")]
    say(
        f"check: fake server stopped (pid {fake.proc.pid}, exit {fake.proc.returncode}); "
        f"caller threads left: {len(stray)}"
    )
    say(f"total bench time {time.perf_counter() - began:.0f} s")
    verdicts = ", ".join(verdict(ok) for ok in results)
    say(f"result: {verdicts} -> exit {0 if all(results) else 1}")
    if keep:
        note(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
