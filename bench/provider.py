"""The provider benchmark: ``python -m bench.provider [--quick] [--keep] [--only a,b,c]``.

The real daemon (``python run_system.py``, embedded Redis, the packaged defaults: only the
provider is set, ``OPENAI_BASE_URL`` pointing at the fake, ``MEMESYS_LLM_MODEL=fake-model``)
against a fake provider that behaves like a real one (``memesys.testing.fake_openai``): a
heavy-tailed latency, a rate limit of its own. Each scenario has a fake and a daemon of its own
(a fresh Redis, so no limiter or breaker state carries over), and prints a table on stdout
(progress goes to stderr):

a. one client, the provider's latency lognormal (median 0.72 s, p95 4.1 s): the meme's p50 and
   p95 (after a warm-up meme), and the calls the provider received against the stage calls the
   memes record (``meme["provider"]["stages"]``), the warm-up meme's in both: its calls earned
   hedge credit the others may spend;
b. many clients honouring ``Retry-After`` (a load client subprocess, ``--client``), the provider
   limiting itself to 10 req/s at 100 ms a call: goodput against what 10 req/s allows, the
   provider calls spent on memes never delivered (every call that no delivered meme records:
   a retry after a 429 counts too), the provider's 429s, the delivered p50; and
   (d) the most threads any daemon process ran meanwhile (``/proc/<pid>/status``);
c. a person's synchronous meme beside 30 queued async tasks (100 ms a call, no provider limit,
   the daemon's own limit at its default), against the same meme alone: each of the person's
   memes in a round of its own, right after 30 fresh tasks are queued.

One ``target:`` line per target, PASS or FAIL; it exits 1 when a target FAILs or a part could
not run. Every process it starts is stopped, and checked gone by pid, also on
Ctrl-C or a failure. See bench/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import contextlib
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.ab import Target, errors_text, exit_code, fetch_metrics
from bench.common import commit_description, http_request, median, percentile, table
from memesys.testing.ports import free_port

REPO = Path(__file__).resolve().parent.parent

# The provider of each scenario (the fake's command-line flags).
TAIL_MEDIAN_S, TAIL_P95_S = 0.72, 4.1  # published live figures for a small hosted model
PROVIDER_RPS = 10  # (b): the provider's own limit
CALL_LATENCY_S = 0.1  # (b) and (c): a fixed latency per call
SEED = 16
TASKS = 30  # (c): async tasks queued beside the person's meme

# Targets.
TAIL_P50_MAX_S = 3.0
TAIL_P95_MAX_S = 6.0
CALLS_PER_STAGE_CALL_MAX = 1.15  # provider calls / stage calls the memes record
GOODPUT_SHARE_MIN = 0.90  # of PROVIDER_RPS / calls per meme
WASTED_SHARE_MAX = 0.05  # provider calls spent on memes not delivered / provider calls
PROVIDER_429_SHARE_MAX = 0.01  # provider 429s / provider calls
DELIVERED_P50_MAX_S = 3.0
BESIDE_TASKS_RATIO_MAX = 2.0  # the person's meme beside the tasks / alone
THREADS_MAX = 32  # any daemon process, during (b)

REQUEST_TIMEOUT_S = 60.0
NO_RETRY_AFTER_PAUSE_S = 1.0  # a client's pause after a failure that names no Retry-After
TASKS_DRAIN_MAX_S = 150.0  # (c): the longest wait for a round's tasks (tasks.timeout_s is 120)
# What bench.pipeline's daemons run with that is not the packaged default: dropped here, so
# that only the provider (key, model, base URL) is set.
NOT_DEFAULTS = (
    "MEMESYS_PIPELINE_MODE",
    *(k for k in pipeline.BENCH_ENV if k.startswith("MEMESYS_") and k != "MEMESYS_LLM_MODEL"),
)


@dataclass(frozen=True)
class Mode:
    name: str
    tail_memes: int  # (a)
    clients: int  # (b)
    window_s: float  # (b)
    person_memes: int  # (c): alone, then beside the tasks


FULL = Mode("full", tail_memes=50, clients=60, window_s=60.0, person_memes=5)
QUICK = Mode("quick", tail_memes=12, clients=20, window_s=20.0, person_memes=3)


def say(text: str = "") -> None:
    print(text, flush=True)


_BEGAN = time.monotonic()


def note(text: str) -> None:
    print(
        f"[bench.provider {time.monotonic() - _BEGAN:4.0f} s] {text}", file=sys.stderr, flush=True
    )


# -- the load client of (b) (its own process) ---------------------------------------------------


async def client_run(port: int, clients: int, duration: float, token: str) -> dict[str, Any]:
    """``clients`` workers make fresh memes for ``duration`` seconds, each honouring the
    ``Retry-After`` of a refusal: it waits that long and asks again for the same meme (a
    refusal without one: a pause, then the next meme). No new attempt starts after the
    window; those in flight are awaited.

    Returns every delivered meme (completion time from the start, the delivering request's
    latency, the time since the meme's first try, its stage calls), the refusals by status and
    code, and the memes given up."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/memes"
    delivered: list[dict[str, float]] = []
    refusals: Counter[str] = Counter()
    examples: dict[str, str] = {}
    attempts = abandoned = 0
    begin = time.perf_counter()
    end = begin + duration
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    ) as session:

        async def worker(w: int) -> None:
            nonlocal attempts, abandoned
            i = 0
            while time.perf_counter() < end:
                i += 1
                body = {"topic": f"bench {token} client {w} meme {i}", "fresh": True}
                first = time.perf_counter()
                while True:
                    attempts += 1
                    started = time.perf_counter()
                    wait: float | None = None
                    try:
                        async with session.post(url, json=body) as response:
                            raw = await response.read()
                            status = response.status
                            header = response.headers.get("Retry-After")
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        status, raw, header = 0, str(exc).encode(), None
                    done = time.perf_counter()
                    payload = _json(raw)
                    if status == 201 and isinstance(payload, dict):
                        stages = (payload.get("provider") or {}).get("stages") or {}
                        delivered.append(
                            {
                                "at": done - begin,
                                "latency": done - started,
                                "since_first": done - first,
                                "stage_calls": len(stages),
                            }
                        )
                        break
                    kind = f"{status} {_code(payload)}" if status else "client error"
                    refusals[kind] += 1
                    examples.setdefault(kind, _message(payload, raw))
                    if header is not None:
                        with contextlib.suppress(ValueError):
                            wait = float(header)
                    if wait is None or time.perf_counter() + wait >= end:
                        abandoned += 1
                        if wait is None:
                            await asyncio.sleep(NO_RETRY_AFTER_PAUSE_S)
                        break
                    await asyncio.sleep(wait)

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return {
        "clients": clients,
        "window_s": duration,
        "wall_s": time.perf_counter() - begin,
        "attempts": attempts,
        "delivered": delivered,
        "abandoned": abandoned,
        "refusals": dict(refusals),
        "examples": examples,
    }


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _code(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("code", "?"))
    return "not-json"


def _message(payload: Any, raw: bytes) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", ""))[:200]
    return raw[:200].decode(errors="replace")


# -- processes ------------------------------------------------------------------------------------


class ProviderFake(pipeline.Fake):
    """bench.pipeline's fake process (``wait_ready``, ``stop``), with this scenario's flags."""

    def __init__(self, workdir: Path, name: str, flags: list[str]) -> None:
        self.port = free_port()
        self.log_path = workdir / f"fake-{name}.log"
        self.flags = flags
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "memesys.testing.fake_openai",
                    "--port",
                    str(self.port),
                    "--seed",
                    str(SEED),
                    *flags,
                ],
                cwd=REPO,
                env=pipeline.base_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.url = ""

    def stats(self) -> dict[str, Any]:
        status, body = http_request(self.port, "GET", "/_fake/stats", timeout=10.0)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"the fake's /_fake/stats answered {status}")
        return body


def daemon_at_defaults(fake_url: str, workdir: Path, name: str) -> pipeline.Daemon:
    """bench.pipeline's daemon with the packaged defaults: only the provider is set."""
    daemon = pipeline.Daemon("parallel", fake_url, workdir, name=name)
    for key in NOT_DEFAULTS:
        daemon.env.pop(key, None)
    return daemon


class Scenario:
    """A fake and a daemon of their own, stopped (and checked gone) on leaving, also on
    Ctrl-C or a failure."""

    def __init__(self, name: str, flags: list[str], bench: Bench) -> None:
        self.name, self.flags, self.bench = name, flags, bench
        self.fake: ProviderFake | None = None
        self.daemon: pipeline.Daemon | None = None

    def __enter__(self) -> Scenario:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> Scenario:
        bench = self.bench
        self.fake = ProviderFake(bench.workdir, self.name, self.flags)
        bench.cleanup.callback(self._stop_fake)
        bench.started.append(self.fake.proc.pid)
        url = self.fake.wait_ready()
        note(f"{self.name}: fake pid {self.fake.proc.pid} at {url} ({' '.join(self.flags)})")
        self.daemon = daemon_at_defaults(url, bench.workdir, self.name).start()
        bench.cleanup.callback(self._stop_daemon)
        assert self.daemon.proc is not None
        bench.started.append(self.daemon.proc.pid)
        self.daemon.wait_ready()
        bench.started.extend(self.daemon.redis_pids)
        note(f"{self.name}: daemon pid {self.daemon.proc.pid} ready on port {self.daemon.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_daemon()
        self._stop_fake()

    def _stop_daemon(self) -> None:
        if self.daemon is not None and not self.daemon.stopped:
            self.bench.leftovers[f"{self.name} daemon"] = self.daemon.stop()

    def _stop_fake(self) -> None:
        if self.fake is not None and self.fake.proc.poll() is None:
            self.bench.leftovers[f"{self.name} fake"] = self.fake.stop()

    @property
    def port(self) -> int:
        assert self.daemon is not None
        return self.daemon.port

    def provider(self) -> dict[str, Any]:
        assert self.fake is not None
        return self.fake.stats()


@dataclass
class Bench:
    workdir: Path
    cleanup: contextlib.ExitStack
    started: list[int]
    leftovers: dict[str, list[int]]
    targets: list[Target]
    messages: dict[str, str]


def make_meme(port: int, topic: str, run_async: bool = False) -> tuple[float, int, Any]:
    """(seconds, status, body) of one fresh POST /v1/memes (status 0: no answer)."""
    path = "/v1/memes?async=true" if run_async else "/v1/memes"
    started = time.perf_counter()
    try:
        status, body = http_request(
            port, "POST", path, {"topic": topic, "fresh": True}, timeout=REQUEST_TIMEOUT_S
        )
    except OSError as exc:
        status, body = 0, {"error": {"code": type(exc).__name__, "message": str(exc)}}
    return time.perf_counter() - started, status, body


def stage_calls(meme: dict[str, Any]) -> int:
    return len((meme.get("provider") or {}).get("stages") or {})


STEPS = ("select_write", "judge")  # the critical path's steps, named beside the slowest memes


def hedges_refused(port: int) -> Counter[str]:
    """The daemon's ``memesys_llm_hedges_refused_total`` by ``why`` (budget, rate), from its
    /metrics: the hedges its calls were due and did not get."""
    refused: Counter[str] = Counter()
    for name, labels, value in fetch_metrics(port):
        if name == "memesys_llm_hedges_refused_total":
            refused[labels.get("why", "")] += int(value)
    return refused


def hedges(meme: dict[str, Any]) -> int:
    """The hedges the meme's stages record (provider.stages.<stage>.hedges)."""
    stages = (meme.get("provider") or {}).get("stages") or {}
    return sum(int(stage.get("hedges") or 0) for stage in stages.values())


# -- a. one client, a heavy-tailed provider -------------------------------------------------------


def scenario_tail(mode: Mode, bench: Bench) -> list[str]:
    flags = ["--latency-median", str(TAIL_MEDIAN_S), "--latency-p95", str(TAIL_P95_S)]
    token = uuid.uuid4().hex[:8]
    seconds: list[float] = []
    calls = hedged = counted = 0  # over the memes counted: the warm-up and the delivered
    failures: Counter[str] = Counter()
    timings: dict[str, list[float]] = {}
    # seconds, its place, stage calls, hedges, its select_write and judge seconds
    memes: list[tuple[float, int, int, int, str]] = []
    with Scenario("tail", flags, bench) as scenario:
        note(f"a: a warm-up meme, then {mode.tail_memes} memes one at a time")
        # the calls ratio counts every meme, the warm-up's too: its calls earned hedge credit
        # the measured memes may spend (the budget is per call made since the daemon began)
        before, refused = scenario.provider(), hedges_refused(scenario.port)
        _, status, warm = make_meme(scenario.port, f"bench {token} warm-up")
        if status == 201 and isinstance(warm, dict):
            calls, hedged, counted = stage_calls(warm), hedges(warm), 1
        for i in range(mode.tail_memes):
            elapsed, status, meme = make_meme(scenario.port, f"bench {token} tail {i}")
            if status != 201 or not isinstance(meme, dict):
                kind = f"{status} {_code(meme)}"
                failures[kind] += 1
                bench.messages.setdefault(kind, _message(meme, b""))
                continue
            seconds.append(elapsed)
            took = meme.get("timings") or {}
            steps = "/".join(f"{took.get(s, float('nan')) / 1000:.1f}" for s in STEPS)
            memes.append((elapsed, i + 1, stage_calls(meme), hedges(meme), steps))
            calls += memes[-1][2]
            hedged += memes[-1][3]
            for stage, ms in (meme.get("timings") or {}).items():
                timings.setdefault(stage, []).append(ms / 1000)
        after = scenario.provider()
        refused = hedges_refused(scenario.port) - refused
    attempts = after["attempts"] - before["attempts"]
    p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
    ratio = attempts / calls if calls else float("nan")
    rows: list[list[Any]] = [
        ["memes delivered / asked", f"{len(seconds)} / {mode.tail_memes}"],
        ["failed memes by status and code", errors_text(dict(failures))],
        ["meme p50 s (HTTP round trip)", p50],
        ["meme p95 s", p95],
        ["meme max s", max(seconds, default=float("nan"))],
        ["provider calls (every POST the fake received)", attempts],
        ["stage calls the warm-up and the delivered memes record", calls],
        ["provider calls / stage calls", ratio],
        ["stage calls per meme", calls / (counted + len(seconds)) if calls else float("nan")],
        ["hedges the memes record (provider.stages.*.hedges)", hedged],
        ["hedges / stage calls", hedged / calls if calls else float("nan")],
        [
            "hedges due and not sent (memesys_llm_hedges_refused_total, by why)",
            ", ".join(f"{why} {n}" for why, n in sorted(refused.items())) or "none",
        ],
        [
            f"slowest memes: s (its place in the run, stage calls, hedges, {'/'.join(STEPS)} s)",
            ", ".join(
                f"{m[0]:.2f} (#{m[1]}, {m[2]}, {m[3]}, {m[4]})" for m in sorted(memes)[-4:][::-1]
            ),
        ],
    ]
    rows += [
        [f"median timings.{stage} s", median(timings[stage])]
        for stage in ("select_write", "select", "write", "judge", "pipeline", "total")
        if stage in timings
    ]
    bench.targets += [
        Target(
            f"a. one client, lognormal provider: meme p50 <= {TAIL_P50_MAX_S:g} s",
            f"{p50:.2f} s",
            None if not seconds else p50 <= TAIL_P50_MAX_S,
        ),
        Target(
            f"a. meme p95 <= {TAIL_P95_MAX_S:g} s",
            f"{p95:.2f} s",
            None if not seconds else p95 <= TAIL_P95_MAX_S,
        ),
        Target(
            f"a. provider calls <= {CALLS_PER_STAGE_CALL_MAX:g} x the stage calls recorded",
            f"{attempts} / {calls} = {ratio:.2f}",
            None if not calls else ratio <= CALLS_PER_STAGE_CALL_MAX,
        ),
    ]
    return [
        table(
            f"a. One client, the provider's latency lognormal (median {TAIL_MEDIAN_S:g} s, p95 "
            f"{TAIL_P95_S:g} s, seed {SEED}), no provider limit, the daemon at its defaults: "
            f"{mode.tail_memes} fresh memes one at a time after one warm-up meme",
            ["measure", "value"],
            rows,
        )
    ]


# -- b. many clients, a provider that limits itself; d. threads -----------------------------------


def run_load_client(port: int, mode: Mode, bench: Bench) -> dict[str, Any]:
    run = pipeline._run_helpers()
    log_path = bench.workdir / "client.log"
    with open(log_path, "ab") as log:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.provider",
                "--client",
                "--port",
                str(port),
                "--clients",
                str(mode.clients),
                "--duration",
                str(mode.window_s),
                "--token",
                uuid.uuid4().hex[:8],
            ],
            cwd=REPO,
            env=pipeline.base_env(),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    bench.cleanup.callback(run.stop_process, client)
    bench.started.append(client.pid)
    out, _ = client.communicate(timeout=mode.window_s + REQUEST_TIMEOUT_S + 30)
    if client.returncode != 0 or not out.strip():
        raise RuntimeError(f"the load client failed; log {log_path}:\n{run.log_tail(log_path)}")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def scenario_limited(mode: Mode, bench: Bench) -> list[str]:
    flags = ["--latency", str(CALL_LATENCY_S), "--rps", str(PROVIDER_RPS)]
    with Scenario("limited", flags, bench) as scenario:
        assert scenario.daemon is not None
        note("b: a warm-up meme")
        make_meme(scenario.port, f"bench {uuid.uuid4().hex[:8]} warm-up")
        time.sleep(1.0)  # the provider's window empties
        note(
            f"b: {mode.clients} clients honouring Retry-After for {mode.window_s:g} s, the "
            f"provider at {PROVIDER_RPS} req/s"
        )
        before = scenario.provider()
        with pipeline.ThreadWatch(scenario.daemon) as watch:
            got = run_load_client(scenario.port, mode, bench)
        after = scenario.provider()
    bench.messages.update({k: v for k, v in got["examples"].items() if k not in bench.messages})
    attempts = after["attempts"] - before["attempts"]
    provider_429 = after["rate_limited"] - before["rate_limited"]
    delivered = got["delivered"]
    in_window = [m for m in delivered if m["at"] <= mode.window_s]
    useful = sum(m["stage_calls"] for m in delivered)
    per_meme = useful / len(delivered) if delivered else float("nan")
    bound = PROVIDER_RPS / per_meme if delivered else float("nan")
    goodput = len(in_window) / mode.window_s
    wasted = (attempts - useful) / attempts if attempts else float("nan")
    share_429 = provider_429 / attempts if attempts else float("nan")
    latency = [m["latency"] for m in delivered]
    since_first = [m["since_first"] for m in delivered]
    p50 = percentile(latency, 50)
    rows: list[list[Any]] = [
        [
            "clients / window s / whole run s",
            f"{mode.clients} / {mode.window_s:g} / {got['wall_s']:.1f}",
        ],
        ["meme requests (retries included)", got["attempts"]],
        ["memes delivered (in the window / in all)", f"{len(in_window)} / {len(delivered)}"],
        ["memes given up (no Retry-After, or past the window)", got["abandoned"]],
        ["refusals by status and code", errors_text(got["refusals"])],
        ["stage calls per delivered meme", per_meme],
        [f"goodput memes/s (in the window) / {PROVIDER_RPS} / calls per meme", goodput],
        ["  bound memes/s", bound],
        ["  share of the bound", goodput / bound if delivered else float("nan")],
        ["provider calls (every POST the fake received)", attempts],
        ["  answered 429 by the provider's limit", provider_429],
        ["  recorded by delivered memes", useful],
        ["  not recorded by a delivered meme: spent on memes not delivered (share)", wasted],
        ["provider calls/s over the whole run", attempts / got["wall_s"]],
        ["provider peak concurrent calls (whole fake)", after["peak_in_flight"]],
        ["delivered p50 s (the delivering request)", p50],
        ["delivered p95 s (the delivering request)", percentile(latency, 95)],
        ["delivered p50 s (from the meme's first try)", percentile(since_first, 50)],
    ]
    threads = watch.by_role()
    most = max((row[2] for row in threads), default=0)
    bench.targets += [
        Target(
            f"b. goodput >= {GOODPUT_SHARE_MIN:.0%} of {PROVIDER_RPS} req/s / calls per meme",
            f"{goodput:.2f} memes/s of {bound:.2f} = {goodput / bound:.0%}"
            if delivered
            else "no meme delivered",
            None if not delivered else goodput >= GOODPUT_SHARE_MIN * bound,
        ),
        Target(
            f"b. provider calls spent on memes not delivered <= {WASTED_SHARE_MAX:.0%}"
            " (every call no delivered meme records)",
            f"{attempts - useful} of {attempts} = {wasted:.1%}",
            None if not attempts else wasted <= WASTED_SHARE_MAX,
        ),
        Target(
            f"b. provider 429s <= {PROVIDER_429_SHARE_MAX:.0%} of its calls",
            f"{provider_429} of {attempts} = {share_429:.1%}",
            None if not attempts else share_429 <= PROVIDER_429_SHARE_MAX,
        ),
        Target(
            f"b. delivered p50 <= {DELIVERED_P50_MAX_S:g} s",
            f"{p50:.2f} s",
            None if not delivered else p50 <= DELIVERED_P50_MAX_S,
        ),
        Target(
            f"d. threads of any daemon process during b <= {THREADS_MAX}",
            str(most),
            None if not threads else most <= THREADS_MAX,
        ),
    ]
    return [
        table(
            f"b. {mode.clients} clients honouring Retry-After for {mode.window_s:g} s, the "
            f"provider limiting itself to {PROVIDER_RPS} req/s at {CALL_LATENCY_S * 1000:.0f} ms "
            "a call, the daemon at its defaults",
            ["measure", "value"],
            rows,
        ),
        "",
        table(
            "d. The most threads of one process during b (/proc/<pid>/status, every "
            f"{pipeline.THREAD_SAMPLE_S:g} s)",
            ["process group", "processes", "most threads"],
            threads,
            digits=0,
        ),
    ]


# -- c. a person's meme beside queued tasks -------------------------------------------------------


def _steps(meme: Any) -> str:
    """A meme's sequential steps from its ``timings`` (s): what a slow one waited on."""
    timings = meme.get("timings") if isinstance(meme, dict) else None
    if not isinstance(timings, dict):
        return "-"
    steps = [(name, ms) for name, ms in timings.items() if name.rstrip("_0123456789") in _STEPS]
    return " ".join(f"{name} {ms / 1000:.2f}" for name, ms in steps) or "-"


_STEPS = ("select", "write", "select_write", "judge", "refine", "render", "store")


def task_states(port: int, task_ids: list[str]) -> Counter[str]:
    states: Counter[str] = Counter()
    for task_id in task_ids:
        status, body = http_request(port, "GET", f"/v1/tasks/{task_id}")
        states[body.get("status", "?") if isinstance(body, dict) else str(status)] += 1
    return states


def scenario_beside_tasks(mode: Mode, bench: Bench) -> list[str]:
    """Each round queues TASKS fresh tasks, makes the person's meme at once, and waits for the
    round's tasks to end before the next round: every meme of the person meets a full queue."""
    flags = ["--latency", str(CALL_LATENCY_S)]
    token = uuid.uuid4().hex[:8]
    failures: Counter[str] = Counter()
    alone: list[float] = []
    beside: list[float] = []
    rounds: list[list[Any]] = []

    def person(label: str) -> tuple[float | None, str]:
        """The meme's seconds (None: it failed) and where they went (its steps' timings)."""
        elapsed, status, meme = make_meme(scenario.port, f"bench {token} {label}")
        if status == 201:
            return elapsed, _steps(meme)
        kind = f"{label.split()[0]}: {status} {_code(meme)}"
        failures[kind] += 1
        bench.messages.setdefault(kind, _message(meme, b""))
        return None, "-"

    with Scenario("tasks", flags, bench) as scenario:
        note(f"c: a warm-up meme, {mode.person_memes} memes alone")
        make_meme(scenario.port, f"bench {token} warm-up")
        alone += [t for i in range(mode.person_memes) if (t := person(f"alone {i}")[0]) is not None]
        for r in range(mode.person_memes):
            note(f"c: round {r + 1}: {TASKS} async tasks queued, then the person's meme")
            tasks = []
            for i in range(TASKS):
                _, status, body = make_meme(
                    scenario.port, f"bench {token} round {r} task {i}", run_async=True
                )
                if status == 202 and isinstance(body, dict):
                    tasks.append(body["task_id"])
                else:
                    failures[f"task: {status} {_code(body)}"] += 1
            elapsed, steps = person(f"beside {r}")
            if elapsed is not None:
                beside.append(elapsed)
            states = task_states(scenario.port, tasks)
            began, states_after = time.monotonic(), states
            while states_after["queued"] + states_after["running"] and (
                time.monotonic() - began < TASKS_DRAIN_MAX_S
            ):
                time.sleep(0.5)
                states_after = task_states(scenario.port, tasks)
            rounds.append(
                [
                    f"round {r + 1}",
                    elapsed if elapsed is not None else float("nan"),
                    steps,
                    errors_text(dict(states)),
                    time.monotonic() - began,
                    errors_text(dict(states_after)),
                ]
            )
    ratio = median(beside) / median(alone) if alone and beside else float("nan")
    rows: list[list[Any]] = [
        ["the person's meme alone, median s", median(alone)],
        [f"beside {TASKS} queued tasks, median s", median(beside)],
        ["ratio", ratio],
        ["memes alone / beside delivered", f"{len(alone)} / {len(beside)} of {mode.person_memes}"],
        ["failures by status and code", errors_text(dict(failures))],
    ]
    bench.targets.append(
        Target(
            f"c. a person's meme beside {TASKS} queued tasks <= {BESIDE_TASKS_RATIO_MAX:g} x alone",
            f"{median(beside):.2f} s / {median(alone):.2f} s = {ratio:.2f}x",
            None if ratio != ratio else ratio <= BESIDE_TASKS_RATIO_MAX,
        )
    )
    return [
        table(
            f"c. A person's synchronous meme beside {TASKS} queued async tasks, the provider at "
            f"{CALL_LATENCY_S * 1000:.0f} ms a call without a limit, the daemon at its defaults "
            f"(its own LLM rate limit included); {mode.person_memes} memes alone, then "
            f"{mode.person_memes} rounds of {TASKS} fresh tasks and one meme",
            ["measure", "value"],
            rows,
        ),
        "",
        table(
            "c. rounds: the person's meme and its steps (s, from its timings), the round's "
            "tasks when it was answered, the wait until they ended",
            ["round", "meme s", "its steps", "tasks then", "then waited s", "tasks after"],
            rounds,
        ),
    ]


# -- main -----------------------------------------------------------------------------------------


def header(mode: Mode) -> str:
    import psutil

    busy = psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1)
    return "\n".join(
        [
            f"memesys provider benchmark ({mode.name})  {datetime.datetime.now():%Y-%m-%d %H:%M}"
            f"  commit {commit_description(REPO)}",
            f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {busy:.2f} cores busy "
            "in the second before the start",
            "daemons: packaged defaults + OPENAI_API_KEY=test-key MEMESYS_LLM_MODEL=fake-model "
            "OPENAI_BASE_URL=<fake>; a fake and a daemon per scenario",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.provider", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a reduced run: {QUICK.tail_memes} memes in a, {QUICK.clients} clients for "
        f"{QUICK.window_s:g} s in b",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--only",
        default="a,b,c",
        help="the scenarios to run, by letter (default a,b,c; d, the threads, is measured in b)",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="x", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        result = asyncio.run(client_run(args.port, args.clients, args.duration, args.token))
        print(json.dumps(result), flush=True)
        return 0
    only = {letter.strip() for letter in args.only.split(",") if letter.strip()}
    if not only or only - {"a", "b", "c"}:
        parser.error(f"--only takes letters among a, b and c, not {args.only!r}")
    return orchestrate(QUICK if args.quick else FULL, args.keep, only)


def orchestrate(mode: Mode, keep: bool, only: set[str]) -> int:
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-provider-"))
    say(header(mode))
    say()
    failed: list[str] = []
    with contextlib.ExitStack() as cleanup:
        bench = Bench(workdir, cleanup, [], {}, [], {})
        note(f"work dir {workdir}")
        parts: list[tuple[str, Callable[[Mode, Bench], list[str]]]] = [
            ("a. one client, a heavy-tailed provider", scenario_tail),
            ("b. many clients, a provider that limits itself", scenario_limited),
            ("c. a person's meme beside queued tasks", scenario_beside_tasks),
        ]
        for title, part in parts:
            if title[0] not in only:
                continue
            try:
                for text in part(mode, bench):
                    say(text)
            except Exception:
                failed.append(title)
                say(f"{title}: FAILED\n{traceback.format_exc()}")
            say()
    for kind, message in sorted(bench.messages.items()):
        say(f"first message of {kind}: {message}")
    say(pipeline.leftovers_check(bench.started, bench.leftovers))
    say()
    say("Targets")
    for target in bench.targets:
        say(target.line())
    for title in failed:
        say(f"part {title}: could not run (FAIL)")
    passed = sum(1 for t in bench.targets if t.ok)
    code = exit_code(bench.targets, failed)
    say(f"{passed} of {len(bench.targets)} targets PASS; exit {code}")
    say(f"total bench time {time.perf_counter() - began:.0f} s")
    if failed or keep:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
