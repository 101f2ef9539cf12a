"""The pipeline benchmark: ``python -m bench.pipeline [--quick] [--keep] [--defaults]``.

It starts the fake OpenAI-compatible server (``memesys.testing.fake_openai``, 100 ms per
completion) and
two daemons against it, one with ``pipeline.mode=parallel`` and one with ``sequential``, each a
``python run_system.py`` subprocess on free ports with a data dir (and embedded Redis) of its
own, and prints plain-text tables on stdout (progress goes to stderr):

1. one meme at a time: per mode, the client-measured end-to-end latency and the median of each
   stage of the responses' ``timings``; the critical path (select_write, or select + write in
   sequential mode, + the slowest judging call + render + store) and how close each mode comes
   to it;
2. concurrency 100 against the parallel daemon: memes/s, p50/p99 latency, errors by status,
   against the latency bound (100 / critical path) and the CPU limit (2 cores / CPU seconds
   per meme of every process involved, measured at low concurrency);
3. every failed request of every phase, and the check that every process started is gone.

The load is made by a client subprocess (``python -m bench.pipeline --client ...``, aiohttp on
loopback) so it never shares a GIL with anything measured. See bench/README.md.
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
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    commit_description,
    http_request,
    median,
    percentile,
    table,
    verdict,
)
from memesys.testing.ports import free_port

REPO = Path(__file__).resolve().parent.parent

FAKE_LATENCY_S = 0.1
MODES = ("parallel", "sequential")
JUDGING = ("appropriateness", "factuality", "instruction_following", "score")
# The first draft's LM calls: one in parallel mode (pipeline.fuse_select_write, on by
# default), two in sequential mode; a meme records the ones it made.
WRITING = ("select", "write", "select_write")
# The stages a meme may go through, in order (refinement is off: see BENCH_ENV).
STAGES = (*WRITING, *JUDGING, "render", "store")
CONCURRENCY = 100
CPU_CONCURRENCY = 4  # the low-concurrency window the CPU cost per meme is measured in
IDLE_S = 3.0  # a window without requests: the background CPU of the processes measured

# Targets.
JUDGE_SPEEDUP = 3.5  # sequential sum of the four judging calls / parallel judge
E2E_WITHIN = 0.10  # |parallel end-to-end - critical path| / critical path
THROUGHPUT_SHARE = 0.90  # memes/s at concurrency 100 / min(latency bound, CPU limit)

# Every daemon runs with these on top of its defaults. Refinement rounds add LM calls when a
# score is low; with none every meme has the same stages.
BENCH_ENV = {
    "OPENAI_API_KEY": "test-key",
    "MEMESYS_LLM_MODEL": "fake-model",
    "MEMESYS_PIPELINE_MAX_REFINE_ROUNDS": "0",
    # The fake provider's "account" has no rate limit; at the packaged 10 req/s the bench
    # would measure the limiter (bench/README.md, bench.ab).
    "MEMESYS_LLM_RATE_LIMIT_RPS": "0",
}
# Overrides of the daemon's capacity defaults for this bench (name -> (value, why)); listed in
# the report. Empty: the defaults do not limit throughput here (since issue 7, see
# docs/perf/2026-11-27-bench-pipeline.md, "Setup").
OVERRIDES: dict[str, tuple[str, str]] = {}

MACHINE = -1  # CpuMeter's key for the whole machine
OTHERS = "other processes on the machine"

READY_MAX_WAIT_S = 60.0
STOP_MAX_WAIT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
MARK = "mark"


@dataclass(frozen=True)
class Mode:
    name: str
    memes: int  # table 1: memes per daemon, one at a time
    warmup_s: float  # per daemon, at CPU_CONCURRENCY, before table 1 (not measured)
    cpu_warmup_s: float
    cpu_window_s: float  # the low-concurrency CPU window
    load_warmup_s: float
    load_s: float  # the concurrency-100 window


FULL = Mode(
    "full",
    memes=20,
    warmup_s=3.0,
    cpu_warmup_s=1.0,
    cpu_window_s=10.0,
    load_warmup_s=8.0,
    load_s=20.0,
)
QUICK = Mode(
    "quick",
    memes=5,
    warmup_s=2.0,
    cpu_warmup_s=1.0,
    cpu_window_s=4.0,
    load_warmup_s=4.0,
    load_s=8.0,
)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"[bench.pipeline] {text}", file=sys.stderr, flush=True)


# -- the load client (its own process) ----------------------------------------------------------


async def client_run(
    port: int, concurrency: int, warmup: float, duration: float, token: str
) -> dict:
    """``concurrency`` workers post fresh memes back to back for warmup + duration seconds.

    A request counts in the window when it *completes* in [warm-up end, window end] (steady
    state, no drain tail in the rate); requests in flight at the end are awaited and their
    failures reported apart. Prints ``{"mark": "start"}`` / ``{"mark": "end"}`` when the
    window opens and closes (the orchestrator reads CPU times there).
    """
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/memes"
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    latencies: list[float] = []
    timings: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}  # the first message of each kind of failure
    outside: Counter[str] = Counter()  # failures completing in the warm-up or after the window
    modes: Counter[str] = Counter()
    engines: Counter[str] = Counter()  # the engine of every meme answered, window or not
    done_outside = 0
    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    opens, closes = begin + warmup, begin + warmup + duration
    loop.call_at(loop.time() + warmup, lambda: print(json.dumps({MARK: "start"}), flush=True))
    loop.call_at(
        loop.time() + warmup + duration, lambda: print(json.dumps({MARK: "end"}), flush=True)
    )

    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    ) as session:

        async def worker(w: int) -> None:
            nonlocal done_outside
            i = 0
            while time.perf_counter() < closes:
                i += 1
                body = {"topic": f"bench {token} client {w} meme {i}", "fresh": True}
                started = time.perf_counter()
                failure, meme = None, None
                try:
                    async with session.post(url, json=body) as response:
                        raw = await response.read()
                        try:
                            payload = json.loads(raw)
                        except ValueError:
                            payload = None
                        if response.status == 201 and isinstance(payload, dict):
                            meme = payload
                        else:
                            code = (
                                payload.get("error", {}).get("code", "?")
                                if isinstance(payload, dict)
                                else "not-json"
                            )
                            failure = f"{response.status} {code}"
                            examples.setdefault(failure, _message(payload, raw))
                except (TimeoutError, aiohttp.ClientError) as exc:
                    failure = f"client {type(exc).__name__}"
                    examples.setdefault(failure, str(exc)[:200])
                finished = time.perf_counter()
                if meme is not None:
                    engines[str(meme.get("engine"))] += 1
                if not opens <= finished <= closes:
                    done_outside += 1
                    if failure:
                        outside[failure] += 1
                    continue
                if failure:
                    errors[failure] += 1
                    continue
                latencies.append((finished - started) * 1000)
                modes[str(meme.get("pipeline_mode"))] += 1
                for stage, ms in (meme.get("timings") or {}).items():
                    timings.setdefault(stage, []).append(ms)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {
        "concurrency": concurrency,
        "window_s": duration,
        "n": len(latencies),
        "rate": len(latencies) / duration,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": dict(errors),
        "errors_outside_window": dict(outside),
        "completed_outside_window": done_outside,
        "examples": examples,
        "modes": dict(modes),
        "engines": dict(engines),
        "timings": {stage: median(values) for stage, values in timings.items()},
        "wall_s": time.perf_counter() - begin,
    }


def _message(payload: Any, raw: bytes) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", ""))[:200]
    return raw[:200].decode(errors="replace")


def client_main(args: argparse.Namespace) -> int:
    result = asyncio.run(
        client_run(args.port, args.concurrency, args.warmup, args.duration, args.token)
    )
    print(json.dumps(result), flush=True)
    return 0


# -- processes ----------------------------------------------------------------------------------


def _run_helpers() -> Any:
    """bench.run's process helpers (stop_process, kill_pids, wait_gone, wait_http, log_tail).

    Imported on first use: bench.run imports memesys (dspy, Pillow), which the client does not
    need."""
    from bench import run

    return run


def base_env() -> dict[str, str]:
    """This environment without anything that would point a daemon elsewhere (as the tests'
    DaemonProcess does): no MEMESYS_*, no REDIS_URL (so each daemon embeds its own Redis), no
    OPENAI_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MEMESYS_", "OPENAI_")) and k != "REDIS_URL"
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


class Fake:
    """``python -m memesys.testing.fake_openai --latency 0.1`` on a free port, output to a log
    file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "fake-openai.log"
        with open(self.log_path, "wb") as log:  # wait_ready reads the first "ready" line
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "memesys.testing.fake_openai",
                    "--port",
                    str(self.port),
                    "--latency",
                    str(FAKE_LATENCY_S),
                ],
                cwd=REPO,
                env=base_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.url = ""

    def wait_ready(self, max_s: float = 30.0) -> str:
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("fake-openai ready at "):
                    self.url = line.split(" at ", 1)[1].strip()
                    return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"the fake server did not start; log {self.log_path}:\n"
            f"{_run_helpers().log_tail(self.log_path)}"
        )

    def stop(self) -> list[int]:
        return stop_plain(self.proc, "the fake server")


def stop_plain(proc: subprocess.Popen, what: str) -> list[int]:
    """SIGTERM a process of ours, wait for it to be gone; anything left is killed by pid and
    returned."""
    run = _run_helpers()
    code = run.stop_process(proc)
    if code != 0:
        note(f"{what} exited with {code}")
    left = run.wait_gone(None, [proc.pid], 5.0)
    if left:
        run.kill_pids(left)
    return left


def leftovers_check(started: list[int], leftovers: dict[str, list[int]]) -> str:
    """The report's line on what was left after SIGTERM and what still runs of ``started``."""
    import psutil

    alive = [
        pid
        for pid in started
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    return (
        "check: processes left after SIGTERM (killed by pid): "
        + (", ".join(f"{what} {pids}" for what, pids in leftovers.items() if pids) or "none")
        + f"; started pids still alive now: {alive or 'none'}"
    )


class Daemon:
    """``python run_system.py`` in one pipeline mode against the fake server.

    ``name`` (default: the mode) names its data dir, log and progress lines; ``env`` is added
    to its environment last (e.g. ``MEMESYS_SYSTEM_ENGINE`` for bench.ab)."""

    def __init__(
        self,
        mode: str,
        fake_url: str,
        workdir: Path,
        name: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.name = name or mode
        self.port, self.admin_port = free_port(), free_port()
        self.data_dir = workdir / f"daemon-{self.name}"
        self.log_path = workdir / f"daemon-{self.name}.log"
        self.env = base_env()
        self.env.update(BENCH_ENV)
        self.env.update({"OPENAI_BASE_URL": fake_url, "MEMESYS_PIPELINE_MODE": mode})
        self.env.update({name: value for name, (value, _) in OVERRIDES.items()})
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.sid: int | None = None
        self.redis_pids: list[int] = []
        self.stopped = False

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "run_system.py",
                    "--port",
                    str(self.port),
                    "--admin-port",
                    str(self.admin_port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait_ready(self) -> None:
        from actors import system as actor_system

        run = _run_helpers()
        run.wait_http(self.port, "/readyz", self.proc, 0.05, READY_MAX_WAIT_S, self.log_path)
        self.sid = actor_system.session_id(self.admin_port)
        if self.sid is None:
            raise RuntimeError(f"{self.name} daemon: no actor admin on port {self.admin_port}")
        self.redis_pids = redis_server_pids(self.proc.pid, self.sid)

    def roles(self) -> dict[int, str]:
        """pid -> role: the gateway, each pool and each kind of worker (from ``memesys.cli.admin
        --json status``), the rest of the actor session (admin, logger, supervisors), the
        embedded redis-server."""
        from actors import system as actor_system

        roles = {self.proc.pid: "gateway (daemon process)"}
        kinds = {
            "generator": "generator workers",
            "verify": "verifier workers",
            "render": "render workers",
            "store": "store workers",
        }
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "memesys.cli.admin",
                "--admin-port",
                str(self.admin_port),
                "--json",
                "status",
            ],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if status.returncode != 0:
            raise RuntimeError(f"memesys.cli.admin status failed: {status.stderr.strip()}")
        for child in json.loads(status.stdout)["children"]:
            if child["name"] in kinds:
                if child.get("pid"):
                    roles[child["pid"]] = POOL_ROLES.get(child["name"], "render and store pools")
                for worker in child.get("children") or ():
                    if worker.get("pid"):
                        roles[worker["pid"]] = kinds[child["name"]]
        for proc in actor_system.session_processes(self.sid):
            roles.setdefault(proc.pid, "rest of the actor session")  # admin, logger, root...
        for pid in self.redis_pids:
            roles[pid] = "redis-server (embedded)"
        return roles

    def stop(self) -> list[int]:
        """SIGTERM, wait for the exit, then for its actor session and redis-server to be gone;
        anything left is killed by pid and returned."""
        if self.proc is None or self.stopped:
            return []
        self.stopped = True
        run = _run_helpers()
        if self.sid is None:  # it never became ready: find its session before it goes
            from actors import system as actor_system

            self.sid = actor_system.session_id(self.admin_port)
        code = run.stop_process(self.proc, STOP_MAX_WAIT_S)
        if code != 0:
            note(f"{self.name} daemon exited with {code}; log {self.log_path}")
        left = run.wait_gone(self.sid, self.redis_pids + [self.proc.pid], 5.0)
        if left:
            note(
                f"{self.name} daemon: {len(left)} processes left after SIGTERM: {left}; "
                "killing them by pid"
            )
            run.kill_pids(left)
        return left


def redis_server_pids(daemon_pid: int, sid: int | None) -> list[int]:
    """The embedded redis-server of a daemon: a child of the tree's redis/server actor (in a
    session of its own, so not among the session's processes), or of the daemon process."""
    import psutil

    from actors import system as actor_system

    parents = [psutil.Process(daemon_pid)]
    parents += actor_system.session_processes(sid) if sid else []
    pids = set()
    for parent in parents:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.name() == "redis-server":
                        pids.add(child.pid)
    return sorted(pids)


class CpuMeter:
    """CPU seconds (user + system, from psutil, i.e. /proc/<pid>/stat) by role."""

    def __init__(self, roles: dict[int, str]) -> None:
        import psutil

        self.procs: dict[int, tuple[str, Any]] = {}
        for pid, role in roles.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.procs[pid] = (role, psutil.Process(pid))

    def snapshot(self) -> dict[int, float]:
        """CPU seconds so far by pid; key MACHINE: busy seconds of the whole machine (every
        CPU's time less idle and iowait), to see what other processes took."""
        import psutil

        machine = psutil.cpu_times()
        used = {
            MACHINE: sum(machine)
            - machine.idle
            - getattr(machine, "iowait", 0.0)
            - getattr(machine, "guest", 0.0)
            - getattr(machine, "guest_nice", 0.0)
        }
        for pid, (_, proc) in self.procs.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                used[pid] = times.user + times.system
        return used

    def by_role(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds used between two snapshots, summed by role. A process that vanished
        in between is reported (its time is lost)."""
        spent: dict[str, float] = {}
        for pid, (role, _) in self.procs.items():
            if pid in before and pid not in after:
                note(f"pid {pid} ({role}) exited inside a CPU window; its time is not counted")
            spent[role] = spent.get(role, 0.0) + after.get(pid, 0.0) - before.get(pid, 0.0)
        spent[OTHERS] = after[MACHINE] - before[MACHINE] - sum(spent.values())
        return spent


def run_client(
    port: int,
    concurrency: int,
    warmup: float,
    duration: float,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    meter: CpuMeter | None = None,
    label: str = "",
) -> dict:
    """Run the load client subprocess; with a meter, CPU snapshots at the window's marks (the
    client's own CPU is added as "load client")."""
    run = _run_helpers()
    token = uuid.uuid4().hex[:8]
    with open(workdir / "client.log", "ab") as log:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.pipeline",
                "--client",
                "--port",
                str(port),
                "--concurrency",
                str(concurrency),
                "--warmup",
                str(warmup),
                "--duration",
                str(duration),
                "--token",
                token,
            ],
            cwd=REPO,
            env=base_env(),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    cleanup.callback(run.stop_process, client)
    if meter is not None:
        import psutil

        meter.procs[client.pid] = ("load client", psutil.Process(client.pid))
    marks: dict[str, dict[int, float]] = {}
    result: dict | None = None
    for raw in client.stdout:
        line = json.loads(raw)
        if MARK in line:
            if meter is not None:
                marks[line[MARK]] = meter.snapshot()
            continue
        result = line
    client.wait(timeout=30)
    if client.returncode != 0 or result is None:
        raise RuntimeError(
            f"the load client ({label}) failed; log {workdir / 'client.log'}:\n"
            f"{run.log_tail(workdir / 'client.log')}"
        )
    if meter is not None:
        result["cpu_s"] = meter.by_role(marks["start"], marks["end"])
        meter.procs.pop(client.pid, None)
    return result


# -- 1. one meme at a time ------------------------------------------------------------------------


@dataclass
class Serial:
    """Table 1's samples of one daemon."""

    e2e_ms: list[float] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    judging_sum_ms: list[float] = field(default_factory=list)  # the four calls, per meme
    judging_max_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    wrong_mode: int = 0
    stage_sets: Counter[tuple[str, ...]] = field(default_factory=Counter)

    def stage(self, name: str) -> float:
        return median(self.timings.get(name, []))

    def writing(self) -> float:
        """The median time of the writing calls these memes made (select_write, or select +
        write)."""
        return sum(self.stage(s) for s in WRITING if s in self.timings)

    def critical_path(self) -> tuple[float, str]:
        """The writing calls + the slowest judging call + render + store, each a median."""
        parts = [self.stage(s) for s in WRITING if s in self.timings]
        judging = [self.stage(s) for s in JUDGING]
        tail = [self.stage(s) for s in ("render", "store")]
        total = sum(parts) + max(judging) + sum(tail)
        how = (
            " + ".join(f"{p:.1f}" for p in parts)
            + f" + max({', '.join(f'{j:.1f}' for j in judging)})"
            f" + {tail[0]:.1f} + {tail[1]:.1f} = {total:.1f} ms"
        )
        return total, how


def post_meme(port: int, topic: str) -> tuple[float, int, Any]:
    started = time.perf_counter()
    try:
        status, body = http_request(
            port, "POST", "/v1/memes", {"topic": topic, "fresh": True}, timeout=REQUEST_TIMEOUT_S
        )
    except OSError as exc:
        return (time.perf_counter() - started) * 1000, 0, {"error": {"code": type(exc).__name__}}
    return (time.perf_counter() - started) * 1000, status, body


def bench_serial(daemons: dict[str, Daemon], mode: Mode) -> dict[str, Serial]:
    """N memes per daemon, one at a time, the two daemons interleaved meme by meme (so that
    any drift of the machine hits both modes alike)."""
    samples = {name: Serial() for name in daemons}
    token = uuid.uuid4().hex[:8]
    for i in range(mode.memes):
        for name, daemon in daemons.items():
            elapsed, status, meme = post_meme(daemon.port, f"bench {token} one at a time {i}")
            got = samples[name]
            if status != 201 or not isinstance(meme, dict) or "timings" not in meme:
                code = (
                    meme.get("error", {}).get("code", "?") if isinstance(meme, dict) else "not-json"
                )
                got.failures[f"{status} {code}"] += 1
                got.examples.setdefault(f"{status} {code}", _message(meme, b""))
                continue
            got.e2e_ms.append(elapsed)
            if meme.get("pipeline_mode") != name:
                got.wrong_mode += 1
            timings = meme["timings"]
            got.stage_sets[tuple(s for s in timings if s in STAGES or s.startswith("refine"))] += 1
            for stage, ms in timings.items():
                got.timings.setdefault(stage, []).append(ms)
            if all(s in timings for s in JUDGING):
                got.judging_sum_ms.append(sum(timings[s] for s in JUDGING))
                got.judging_max_ms.append(max(timings[s] for s in JUDGING))
    return samples


def report_serial(samples: dict[str, Serial], mode: Mode) -> tuple[str, list[str], float]:
    par, seq = samples["parallel"], samples["sequential"]
    rows: list[list[Any]] = [
        ["HTTP round trip (client)", median(par.e2e_ms), median(seq.e2e_ms)],
        ["timings.total (generator worker)", par.stage("total"), seq.stage("total")],
    ]
    rows += [[f"timings.{s}", par.stage(s), seq.stage(s)] for s in WRITING]
    rows += [[f"timings.{s}", par.stage(s), seq.stage(s)] for s in JUDGING]
    rows.append(
        [
            "judging group: parallel timings.judge, sequential sum of the four",
            par.stage("judge"),
            median(seq.judging_sum_ms),
        ]
    )
    rows.append(
        [
            "  (slowest of the four calls, per meme)",
            median(par.judging_max_ms),
            median(seq.judging_max_ms),
        ]
    )
    rows += [[f"timings.{s}", par.stage(s), seq.stage(s)] for s in ("render", "store")]
    cp_par, how_par = par.critical_path()
    cp_seq, how_seq = seq.critical_path()
    rows.append(["critical path (from this column's medians)", cp_par, cp_seq])
    rows.append(
        [
            "HTTP round trip - critical path",
            median(par.e2e_ms) - cp_par,
            median(seq.e2e_ms) - cp_seq,
        ]
    )
    text = table(
        f"1. One meme at a time: {mode.memes} sequential POST /v1/memes (fresh, distinct "
        f"topics) per mode, the two daemons interleaved; medians in ms, fake LM latency "
        f"{FAKE_LATENCY_S * 1000:.0f} ms per call",
        ["measure", "parallel", "sequential"],
        rows,
    )
    lines = [
        f"critical path (parallel) = select_write (select + write when not fused) + "
        f"max(appropriateness, factuality, instruction_following, score) + render + store = "
        f"{how_par}",
        f"critical path (sequential daemon's medians, for reference) = {how_seq}",
    ]
    speedup = median(seq.judging_sum_ms) / par.stage("judge")
    lines.append(
        f"target: judging group >= {JUDGE_SPEEDUP:g}x faster in parallel mode   measured "
        f"{median(seq.judging_sum_ms):.1f} ms (sequential, sum of the four) / "
        f"{par.stage('judge'):.1f} ms (parallel judge) = {speedup:.2f}x   "
        f"{verdict(speedup >= JUDGE_SPEEDUP)}"
    )
    e2e = median(par.e2e_ms)
    off = (e2e - cp_par) / cp_par
    lines.append(
        f"target: parallel end-to-end within {E2E_WITHIN:.0%} of the critical path   measured "
        f"{e2e:.1f} ms vs {cp_par:.1f} ms = {off:+.1%}   {verdict(abs(off) <= E2E_WITHIN)}"
    )
    # Where the parallel gap goes: each difference is between medians of the same memes.
    gaps = [
        (
            "judge - slowest judging call (fan-out to the verifier workers and back)",
            par.stage("judge") - median(par.judging_max_ms),
        ),
        (
            "timings.pipeline - (writing calls + judge) (between stages)",
            par.stage("pipeline") - par.writing() - par.stage("judge"),
        ),
        (
            "timings.total - (pipeline + render + store)",
            par.stage("total") - par.stage("pipeline") - par.stage("render") - par.stage("store"),
        ),
        (
            "HTTP round trip - timings.total (client, gateway, bridge, dispatch to a generator "
            "worker)",
            e2e - par.stage("total"),
        ),
    ]
    lines.append(
        "where the parallel end-to-end goes beyond the stages (differences of "
        "medians, ms): " + "; ".join(f"{what} {ms:.1f}" for what, ms in gaps)
    )
    for name, got in samples.items():
        if got.wrong_mode:
            lines.append(f"check: {got.wrong_mode} {name} memes reported another pipeline_mode")
        if len(got.stage_sets) > 1:
            lines.append(
                f"check: {name} memes went through different stages: {dict(got.stage_sets)}"
            )
    return text, lines, cp_par


# -- 2. concurrency 100 ---------------------------------------------------------------------------

POOL_ROLES = {"generator": "generator pool", "verify": "verifier pool"}
ROLE_ORDER = (
    "gateway (daemon process)",
    "generator pool",
    "generator workers",
    "verifier pool",
    "verifier workers",
    "render workers",
    "store workers",
    "render and store pools",
    "rest of the actor session",
    "redis-server (embedded)",
    "fake server",
)
FAKE_ROLE = "fake server"
CLIENT_ROLE = "load client"


def report_load(
    low: dict, high: dict, idle: dict[str, float], cp_ms: float, serial: Serial
) -> list[tuple[str, list[str]]]:
    cores = cpu_cores()
    sections = []
    errors = sum(high["errors"].values())
    rows = [
        [
            str(CPU_CONCURRENCY),
            low["n"],
            low["rate"],
            low["p50_ms"],
            low["p99_ms"],
            sum(low["errors"].values()),
            _errors_text(low["errors"]),
        ],
        [
            str(CONCURRENCY),
            high["n"],
            high["rate"],
            high["p50_ms"],
            high["p99_ms"],
            errors,
            _errors_text(high["errors"]),
        ],
    ]
    text = table(
        f"2. Concurrency {CONCURRENCY}: {CONCURRENCY} clients (aiohttp, loopback) posting fresh "
        f"memes back to back for {high['window_s']:g} s, parallel daemon (the concurrency-"
        f"{CPU_CONCURRENCY} row is the CPU-measuring window, {low['window_s']:g} s)",
        ["clients", "memes", "memes/s", "p50 ms", "p99 ms", "errors", "errors by status"],
        rows,
    )

    per_meme: dict[str, dict[str, float]] = {}
    for label, run in (("low", low), ("high", high)):
        n = max(run["n"], 1)
        per_meme[label] = {role: s * 1000 / n for role, s in run["cpu_s"].items()}
    roles = [r for r in ROLE_ORDER if r in per_meme["low"] or r in per_meme["high"]]
    roles += sorted(
        r
        for r in set(per_meme["low"]) | set(per_meme["high"])
        if r not in roles and r not in (CLIENT_ROLE, OTHERS)
    )
    cpu_rows = [
        [role, per_meme["low"].get(role, 0.0), per_meme["high"].get(role, 0.0)] for role in roles
    ]
    total_low = sum(per_meme["low"].get(r, 0.0) for r in roles)
    total_high = sum(per_meme["high"].get(r, 0.0) for r in roles)
    cpu_rows.append(["total (the CPU limit's basis)", total_low, total_high])
    for role in (CLIENT_ROLE, OTHERS):
        cpu_rows.append(
            [
                f"{role} (not in the total)",
                per_meme["low"].get(role, 0.0),
                per_meme["high"].get(role, 0.0),
            ]
        )
    for what, pick in (
        ("cores busy: the total's processes", lambda r: r not in (CLIENT_ROLE, OTHERS)),
        ("cores busy: the whole machine", lambda r: True),
    ):
        cpu_rows.append(
            [
                what,
                *(
                    sum(s for r, s in run["cpu_s"].items() if pick(r)) / run["window_s"]
                    for run in (low, high)
                ),
            ]
        )
    idle_ours = sum(v for r, v in idle.items() if r not in (CLIENT_ROLE, OTHERS)) / IDLE_S
    cpu_text = table(
        "2b. CPU ms per meme (user + system from /proc via psutil, read when each window "
        "opens and closes, divided by the memes completed in it)",
        ["process group", f"c={CPU_CONCURRENCY}", f"c={CONCURRENCY}"],
        cpu_rows,
    )

    cpu_limit = cores / (total_low / 1000)
    fake_share = per_meme["low"].get(FAKE_ROLE, 0.0) / total_low
    without_fake = cores / ((total_low - per_meme["low"].get(FAKE_ROLE, 0.0)) / 1000)
    latency_bound = CONCURRENCY / (cp_ms / 1000)
    bound = min(latency_bound, cpu_limit)
    binds = "the CPU limit" if cpu_limit < latency_bound else "the latency bound"
    idle_ms = idle_ours / low["rate"] * 1000 if low["rate"] else float("nan")
    lines = [
        f"CPU limit = {cores} cores / {total_low:.1f} CPU ms per meme (concurrency "
        f"{CPU_CONCURRENCY}) = {cpu_limit:.1f} memes/s; the fake server's share is "
        f"{fake_share:.0%} (work a real provider does on its own machines: without it "
        f"{without_fake:.1f} memes/s); of the {total_low:.1f} ms, about {idle_ms:.1f} ms is "
        f"background work the processes do even with no request ({idle_ours:.3f} cores idle "
        f"/ {low['rate']:.1f} memes/s)",
        f"latency bound = {CONCURRENCY} clients / {cp_ms:.1f} ms critical path = "
        f"{latency_bound:.1f} memes/s",
        f"binding: {binds} ({bound:.1f} memes/s)",
        f"target: memes/s at concurrency {CONCURRENCY} >= {THROUGHPUT_SHARE:.0%} of "
        f"{bound:.1f} = {THROUGHPUT_SHARE * bound:.1f}   measured {high['rate']:.1f} "
        f"({high['rate'] / bound:.0%})   {verdict(high['rate'] >= THROUGHPUT_SHARE * bound)}",
    ]
    for label, run in (
        (f"concurrency {CPU_CONCURRENCY}", low),
        (f"concurrency {CONCURRENCY}", high),
    ):
        stolen = run["cpu_s"].get(OTHERS, 0.0) / run["window_s"]
        if stolen > 0.05 * cores:
            lines.append(
                f"warning: other processes on the machine took {stolen:.2f} cores in "
                f"the {label} window: this run's CPU figures are disturbed"
            )
    # Informative: was the concurrency-100 window CPU-bound, and what would its own CPU cost
    # per meme (lower than at low concurrency when messages batch under load) allow?
    taken = (high["cpu_s"].get(OTHERS, 0.0) + high["cpu_s"].get(CLIENT_ROLE, 0.0)) / high[
        "window_s"
    ]
    ours = (
        sum(s for r, s in high["cpu_s"].items() if r not in (CLIENT_ROLE, OTHERS))
        / high["window_s"]
    )
    lines.append(
        f"(informative) at concurrency {CONCURRENCY} the measured processes kept "
        f"{ours:.2f} cores busy of the {cores - taken:.2f} that the client and other "
        f"processes left; at that window's own {total_high:.1f} CPU ms per meme, "
        f"{cores} idle cores would give {cores / (total_high / 1000):.1f} memes/s"
    )
    stage_rows = []
    for stage in (*WRITING, *JUDGING, "judge", "render", "store", "total"):
        stage_rows.append(
            [
                f"timings.{stage}",
                serial.stage(stage),
                low["timings"].get(stage, float("nan")),
                high["timings"].get(stage, float("nan")),
            ]
        )
    stage_rows.append(
        ["HTTP round trip (client)", median(serial.e2e_ms), low["p50_ms"], high["p50_ms"]]
    )
    stage_text = table(
        "2c. (diagnostic) median stage timings of the parallel daemon by load, ms",
        ["stage", "c=1 (table 1)", f"c={CPU_CONCURRENCY}", f"c={CONCURRENCY}"],
        stage_rows,
    )
    sections.append((text, []))
    sections.append((cpu_text, lines))
    sections.append((stage_text, []))
    return sections


def _merge(into: dict[str, str], examples: dict[str, str]) -> None:
    for kind, message in examples.items():
        into.setdefault(kind, message)


def cpu_cores() -> int:
    """The CPUs this process (and its children) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "-"


# -- main -----------------------------------------------------------------------------------------


def header(mode: Mode) -> str:
    commit = commit_description(REPO)
    now = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    import psutil

    busy = psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1)
    lines = [
        f"memesys pipeline benchmark ({mode.name})  {now}  commit {commit}",
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {busy:.2f} "
        "cores busy in the second before the start",
        "daemons: "
        + " ".join(f"{k}={v}" for k, v in BENCH_ENV.items())
        + " OPENAI_BASE_URL=<fake> MEMESYS_PIPELINE_MODE=parallel|sequential",
    ]
    if OVERRIDES:
        lines.append(
            "capacity overrides: "
            + "; ".join(f"{name}={value} ({why})" for name, (value, why) in OVERRIDES.items())
        )
    else:
        lines.append("capacity overrides: none (the daemon's defaults)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="run the daemons without the bench's capacity overrides",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="x", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    if args.defaults:
        OVERRIDES.clear()
    return orchestrate(QUICK if args.quick else FULL, args.keep)


def orchestrate(mode: Mode, keep: bool) -> int:
    run = _run_helpers()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-pipeline-"))
    say(header(mode))
    say()
    failed: list[str] = []
    failures: list[list[Any]] = []  # phase, requests, failed, by status
    messages: dict[str, str] = {}  # the first message of each kind of failure
    leftovers: dict[str, list[int]] = {}
    started: list[int] = []

    def section(title: str, body: Callable[[], Iterable[tuple[str, list[str]]]]) -> bool:
        try:
            for text, lines in body():
                say(text)
                for line in lines:
                    say(line)
                say()
            return True
        except Exception:
            failed.append(title)
            say(f"{title}: FAILED\n{traceback.format_exc()}")
            return False

    with contextlib.ExitStack() as cleanup:
        note(f"work dir {workdir}")
        fake = Fake(workdir)
        cleanup.callback(run.stop_process, fake.proc)
        started.append(fake.proc.pid)
        fake_url = fake.wait_ready()
        note(f"fake server pid {fake.proc.pid} at {fake_url}")
        daemons = {name: Daemon(name, fake_url, workdir).start() for name in MODES}
        for daemon in daemons.values():
            cleanup.callback(daemon.stop)
            started.append(daemon.proc.pid)
        for daemon in daemons.values():
            daemon.wait_ready()
            note(
                f"{daemon.mode} daemon pid {daemon.proc.pid} ready on port {daemon.port} "
                f"(actor session {daemon.sid}, redis-server {daemon.redis_pids})"
            )
        for daemon in daemons.values():
            note(
                f"warming up the {daemon.mode} daemon: {mode.warmup_s:g} s at concurrency "
                f"{CPU_CONCURRENCY}"
            )
            warm = run_client(
                daemon.port, CPU_CONCURRENCY, 0.0, mode.warmup_s, workdir, cleanup, label="warm-up"
            )
            errs = Counter(warm["errors"]) + Counter(warm["errors_outside_window"])
            _merge(messages, warm["examples"])
            failures.append(
                [
                    f"warm-up, {daemon.mode}, c={CPU_CONCURRENCY}",
                    warm["n"] + warm["completed_outside_window"],
                    sum(errs.values()),
                    _errors_text(errs),
                ]
            )

        serial: dict[str, Serial] = {}
        cp_box: list[float] = []

        def table1() -> list[tuple[str, list[str]]]:
            note(f"table 1: {mode.memes} memes per mode, one at a time")
            serial.update(bench_serial(daemons, mode))
            for name, got in serial.items():
                _merge(messages, got.examples)
                failures.append(
                    [
                        f"table 1, {name}, c=1",
                        mode.memes,
                        sum(got.failures.values()),
                        _errors_text(got.failures),
                    ]
                )
            text, lines, cp = report_serial(serial, mode)
            cp_box.append(cp)
            return [(text, lines)]

        section("1. one meme at a time", table1)
        # The sequential daemon has done its part: stop it so that it takes nothing from the
        # concurrency windows.
        leftovers["sequential daemon"] = daemons["sequential"].stop()

        def table2() -> list[tuple[str, list[str]]]:
            par = daemons["parallel"]
            roles = par.roles()
            roles[fake.proc.pid] = FAKE_ROLE
            meter = CpuMeter(roles)
            note(f"idle window: {IDLE_S:g} s without requests")
            time.sleep(1.0)  # let the last table-1 work settle
            before = meter.snapshot()
            time.sleep(IDLE_S)
            idle = meter.by_role(before, meter.snapshot())
            note(f"CPU window: concurrency {CPU_CONCURRENCY}, {mode.cpu_window_s:g} s")
            low = run_client(
                par.port,
                CPU_CONCURRENCY,
                mode.cpu_warmup_s,
                mode.cpu_window_s,
                workdir,
                cleanup,
                meter,
                "CPU window",
            )
            note(
                f"load: concurrency {CONCURRENCY}, {mode.load_warmup_s:g} s warm-up + "
                f"{mode.load_s:g} s"
            )
            high = run_client(
                par.port,
                CONCURRENCY,
                mode.load_warmup_s,
                mode.load_s,
                workdir,
                cleanup,
                meter,
                "concurrency 100",
            )
            for label, got in (
                (f"CPU window, c={CPU_CONCURRENCY}", low),
                (f"concurrency {CONCURRENCY} (window)", high),
            ):
                _merge(messages, got["examples"])
                failures.append(
                    [
                        label,
                        got["n"] + sum(got["errors"].values()),
                        sum(got["errors"].values()),
                        _errors_text(got["errors"]),
                    ]
                )
                outside = got["errors_outside_window"]
                failures.append(
                    [
                        f"{label.split(' (')[0]} (warm-up and drain)",
                        got["completed_outside_window"],
                        sum(outside.values()),
                        _errors_text(outside),
                    ]
                )
                if set(got["modes"]) - {"parallel"}:
                    note(f"{label}: pipeline modes {got['modes']}")
            if not cp_box:
                raise RuntimeError("table 1 did not give a critical path")
            return report_load(low, high, idle, cp_box[0], serial["parallel"])

        section(f"2. concurrency {CONCURRENCY}", table2)
        leftovers["parallel daemon"] = daemons["parallel"].stop()
        leftovers["fake server"] = fake.stop()

    say(
        table(
            "3. Failed requests (status and error code; must be 0 at concurrency 1)",
            ["phase", "requests", "failed", "by status"],
            failures,
        )
    )
    c1 = sum(r[2] for r in failures if "c=1" in r[0])
    say(f"target: no failed request at concurrency 1   measured {c1}   {verdict(c1 == 0)}")
    for kind, message in sorted(messages.items()):
        say(f"first message of {kind}: {message}")
    say(leftovers_check(started, leftovers))
    say()
    say(f"total bench time {time.perf_counter() - began:.0f} s")
    if failed or keep:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


# -- threads of a daemon's processes -----------------------------------------------------------

THREAD_SAMPLE_S = 0.2


def threads_of(pid: int) -> int | None:
    """The Threads: line of /proc/<pid>/status (None: the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class ThreadWatch:
    """The most threads each process of a daemon ran: its processes (the daemon, its actor
    session, its redis-server) listed again every second, /proc read every THREAD_SAMPLE_S,
    in a thread of the bench."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.roles = daemon.roles()
        self.peak: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="thread-watch", daemon=True)

    def _pids(self) -> list[int]:
        from actors import system as actor_system

        assert self.daemon.proc is not None
        pids = {self.daemon.proc.pid, *self.daemon.redis_pids}
        if self.daemon.sid is not None:
            pids.update(p.pid for p in actor_system.session_processes(self.daemon.sid))
        return sorted(pids)

    def _watch(self) -> None:
        pids, listed = self._pids(), time.monotonic()
        while not self._done.wait(THREAD_SAMPLE_S):
            if time.monotonic() - listed >= 1.0:
                pids, listed = self._pids(), time.monotonic()
            for pid in pids:
                count = threads_of(pid)
                if count is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0), count)

    def __enter__(self) -> ThreadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def by_role(self) -> list[list[Any]]:
        """[role, processes, most threads in one of them], the most threads first."""
        roles: dict[str, list[int]] = {}
        for pid, count in self.peak.items():
            roles.setdefault(self.roles.get(pid, "rest of the actor session"), []).append(count)
        rows = [[role, len(counts), max(counts)] for role, counts in roles.items()]
        return sorted(rows, key=lambda row: -row[2])
