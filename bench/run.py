"""The memesys benchmark: ``python -m bench.run [--quick] [--keep]``.

Prints plain-text tables and exits 0 (non-zero only when a part could not run at all):

1. gateway -> actor -> reply overhead (``/bare`` against ``/actor`` at concurrency 1, 16, 64);
2. restart latency of a SIGKILLed generator worker until its replacement answers;
3. time to ready and time to exit of ``python run_system.py``;
4. memory (RSS, PSS) of the daemon, its actor session and its embedded redis-server;
5. (informative) end-to-end meme latency through the daemon, with per-stage timings.

Order matters: the in-process actor system is started before any thread or event loop exists
in this process (Thespian forks its admin from it), after memesys' heavy imports so that the
actors inherit them, as the daemon does. This process never starts a thread: the HTTP server
and the load generator are subprocesses, so the load generator never shares the server's GIL.
See bench/README.md for what each table means.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import contextlib
import datetime
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import memesys.pipeline.lm
import memesys.render.image  # noqa: F401
from actors import system as actor_system
from actors.messages import Ping, Pong, StatusQuery, WhereIs
from bench.common import (
    commit_description,
    http_request,
    median,
    percentile,
    table,
    verdict,
)
from bench.echo import ECHO, Echo, with_echo_pool
from memesys.config import load as load_config
from memesys.storage.connection import resolve
from memesys.telemetry import logs
from memesys.testing.ports import free_port
from memesys.tree.paths import GENERATOR, ROOT
from memesys.tree.spec import root_spec

REPO = Path(__file__).resolve().parent.parent

# Targets.
OVERHEAD_P50_MS_AT_1 = 1.5
ACTOR_RPS_SHARE_AT_64 = 0.20
RESTART_MEDIAN_MS = 50.0
READY_MEDIAN_S = 3.0

RESTART_POLL_S = 0.002
RESTART_MAX_WAIT_S = 5.0
READY_POLL_S = 0.02
READY_MAX_WAIT_S = 60.0
EXIT_MAX_WAIT_S = 30.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Mode:
    name: str
    levels: tuple[int, ...]
    reps: int  # repetitions of each load step (median of runs)
    warmup_s: float
    duration_s: float
    kills: int
    ready_reps: int
    memes: int


FULL = Mode(
    "full", (1, 16, 64), reps=3, warmup_s=0.5, duration_s=3.0, kills=30, ready_reps=3, memes=20
)
QUICK = Mode(
    "quick", (1, 16, 64), reps=1, warmup_s=0.3, duration_s=1.0, kills=20, ready_reps=1, memes=5
)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- process hygiene ---------------------------------------------------------------------------


@contextlib.contextmanager
def fd2_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while forking the actor system.

    Thespian's admin and every actor inherit the starter's stderr and log there; their
    lines belong in a log file, not in the report.
    """
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, SIGKILL by pid if it does not exit; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            note(f"pid {proc.pid} ignored SIGTERM for {timeout:g} s; killing it")
            proc.kill()
            proc.wait()
    return proc.returncode


def kill_pids(pids: list[int]) -> int:
    """SIGKILL the given live pids (never by name); returns how many were alive."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=3)
    return len(alive)


def wait_gone(sid: int | None, pids: list[int], timeout: float) -> list[int]:
    """Wait until the session and the pids are gone; returns whatever is still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in actor_system.session_processes(sid)] if sid else []
        alive += [
            pid
            for pid in pids
            if psutil.pid_exists(pid)
            and pid not in alive
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http(
    port: int, path: str, proc: subprocess.Popen, poll_s: float, max_s: float, log: Path
) -> float:
    """Seconds until ``GET path`` answers 200; raises if the process dies or time runs out."""
    started = time.perf_counter()
    while True:
        try:
            status, _ = http_request(port, "GET", path, timeout=2.0)
            if status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(
                f"pid {proc.pid} exited with {proc.returncode} before "
                f"{path} answered; log {log}:\n{log_tail(log)}"
            )
        if time.perf_counter() - started > max_s:
            raise RuntimeError(f"{path} did not answer 200 within {max_s:g} s; log {log}")
        time.sleep(poll_s)


# -- 1. gateway -> actor -> reply overhead ------------------------------------------------------


def bench_hops(asys: Any, root: Any, reps: int, n: int) -> dict[str, float]:
    """p50 ms of blocking asks from this process (no HTTP, no bridge): to one generator worker
    directly, and through its pool (the hop every gateway request takes)."""
    worker = actor_system.ask(asys, root, WhereIs(f"{ECHO}/worker-0"), 5)
    pool = actor_system.ask(asys, root, WhereIs(ECHO), 5)
    if not (worker.ok and pool.ok):
        raise RuntimeError(f"cannot resolve the echo pool: {worker.error or pool.error}")
    targets = {"worker": worker.payload.address, "pool": pool.payload.address}
    p50s: dict[str, list[float]] = {name: [] for name in targets}
    for rep in range(reps + 1):  # the first round warms up
        for name, address in targets.items():
            latencies = []
            for i in range(n):
                started = time.perf_counter()
                reply = actor_system.ask(asys, address, Echo(i), 5)
                latencies.append((time.perf_counter() - started) * 1000)
                if not reply.ok or reply.payload != i:
                    raise RuntimeError(f"Echo to the {name} answered {reply}")
            if rep:
                p50s[name].append(percentile(latencies, 50))
    return {name: median(values) for name, values in p50s.items()}


class CpuGroups:
    """CPU seconds (user + system) used so far by the processes of one role each."""

    def __init__(self, asys: Any, root: Any, sid: int | None, server_pid: int) -> None:
        reply = actor_system.ask(asys, root, StatusQuery(), 5)
        pool = next(c for c in reply.payload.children if c.name == ECHO)
        self.groups: dict[str, list[psutil.Process]] = {
            "load generator": [],
            "server (HTTP + bridge)": [psutil.Process(server_pid)],
            "echo pool": [psutil.Process(pool.pid)],
            "echo workers": [psutil.Process(w.pid) for w in pool.children],
        }
        known = {p.pid for group in self.groups.values() for p in group}
        self.groups["rest of the actor session"] = [
            p for p in (actor_system.session_processes(sid) if sid else []) if p.pid not in known
        ]

    def add(self, group: str, pid: int) -> None:
        self.groups[group].append(psutil.Process(pid))

    def snapshot(self) -> dict[str, float]:
        used = {}
        for group, procs in self.groups.items():
            total = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            used[group] = total
        return used


def bench_gateway(
    asys: Any,
    root: Any,
    sid: int | None,
    admin_port: int,
    mode: Mode,
    workdir: Path,
    cleanup: contextlib.ExitStack,
) -> list[tuple[str, list[str]]]:
    hops = bench_hops(asys, root, mode.reps, 300 if mode.name == "full" else 200)
    port = free_port()
    server_log = workdir / "server.log"
    with open(server_log, "ab") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.server",
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
                "--root",
                ROOT,
                "--target",
                ECHO,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    cleanup.callback(stop_process, server)
    wait_http(port, "/bare", server, 0.05, 30.0, server_log)
    cpu = CpuGroups(asys, root, sid, server.pid)
    for route in ("/actor", "/direct"):  # resolve the addresses once and warm both paths
        for _ in range(20):
            status, body = http_request(port, "GET", route)
            if status != 200:
                raise RuntimeError(f"{route} answered {status}: {body}")
    routes = ("/bare", "/actor", "/direct")
    plan = [
        {"route": route, "concurrency": level, "rep": rep}
        for rep in range(mode.reps)
        for level in mode.levels
        for route in routes
    ]
    note(f"gateway: {len(plan)} load steps of {mode.warmup_s:g}+{mode.duration_s:g} s")
    with open(workdir / "load.log", "ab") as log:
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.load",
                "--port",
                str(port),
                "--plan",
                json.dumps(plan),
                "--duration",
                str(mode.duration_s),
                "--warmup",
                str(mode.warmup_s),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        cleanup.callback(stop_process, load)
        cpu.add("load generator", load.pid)
        results = []
        marked: dict[str, float] = {}
        for raw in load.stdout:  # a mark when a step's window opens, its result at the end
            line = json.loads(raw)
            if "mark" in line:  # the window opens (its end: the result line)
                if line["mark"] == "start":
                    marked = cpu.snapshot()
                continue
            used = cpu.snapshot()
            line["cpu_ms"] = {
                group: (used[group] - marked.get(group, 0.0)) * 1000 / max(line["n"], 1)
                for group in used
            }
            results.append(line)
        load.wait(timeout=30)
    if load.returncode != 0:
        raise RuntimeError(
            f"the load generator failed; log {workdir / 'load.log'}:\n"
            f"{log_tail(workdir / 'load.log')}"
        )
    stop_process(server)

    def cell(route: str, level: int, key: str) -> float:
        return median(r[key] for r in results if r["route"] == route and r["concurrency"] == level)

    def errors(route: str, level: int) -> int:
        return sum(
            sum(r["errors"].values())
            for r in results
            if r["route"] == route and r["concurrency"] == level
        )

    rows, direct_rows = [], []
    for level in mode.levels:
        b50, a50, d50 = (cell(r, level, "p50_ms") for r in routes)
        brps, arps, drps = (cell(r, level, "rps") for r in routes)
        rows.append(
            [
                str(level),
                b50,
                cell("/bare", level, "p99_ms"),
                a50,
                cell("/actor", level, "p99_ms"),
                a50 - b50,
                brps,
                arps,
                arps / brps if brps else float("nan"),
                errors("/bare", level) + errors("/actor", level),
            ]
        )
        direct_rows.append(
            [
                str(level),
                d50,
                cell("/direct", level, "p99_ms"),
                d50 - b50,
                drps,
                arps,
                errors("/direct", level),
            ]
        )
    overhead_1 = next((r[5] for r in rows if r[0] == "1"), None)
    ratio_64 = next((r[8] for r in rows if r[0] == "64"), None)
    targets = []
    if overhead_1 is not None:
        targets.append(
            f"target: overhead p50 at concurrency 1 <= {OVERHEAD_P50_MS_AT_1:.2f} ms"
            f"   measured {overhead_1:.2f} ms   "
            f"{verdict(overhead_1 <= OVERHEAD_P50_MS_AT_1)}"
        )
    if ratio_64 is not None:
        targets.append(
            f"target: actor req/s >= {ACTOR_RPS_SHARE_AT_64:.0%} of bare at "
            f"concurrency 64   measured {ratio_64:.1%}   "
            f"{verdict(ratio_64 >= ACTOR_RPS_SHARE_AT_64)}"
        )
    main = table(
        f"1. Gateway -> actor -> reply overhead (median of {mode.reps} run(s) of "
        f"{mode.duration_s:g} s per cell, after {mode.warmup_s:g} s warm-up)",
        [
            "concurrency",
            "bare p50 ms",
            "bare p99 ms",
            "actor p50 ms",
            "actor p99 ms",
            "overhead p50 ms",
            "bare req/s",
            "actor req/s",
            "actor/bare",
            "errors",
        ],
        rows,
    )
    direct = table(
        f"1b. (diagnostic) /direct: the directory asks {ECHO}/worker-0, one fixed worker",
        [
            "concurrency",
            "direct p50 ms",
            "direct p99 ms",
            "overhead p50 ms",
            "direct req/s",
            "actor req/s",
            "errors",
        ],
        direct_rows,
    )
    hop_rows = [
        ["ask -> worker -> reply", hops["worker"]],
        ["ask -> pool -> worker -> reply", hops["pool"]],
        ["the pool's hop (difference)", hops["pool"] - hops["worker"]],
    ]
    decomposition = table(
        "1c. (diagnostic) Thespian alone: blocking asks of Echo from the bench process (no "
        f"HTTP, no bridge), median of {mode.reps} p50s",
        ["path", "p50 ms"],
        hop_rows,
    )
    cpu_rows = []
    for level in (mode.levels[0], mode.levels[-1]):
        for route in routes:
            steps = [r for r in results if r["route"] == route and r["concurrency"] == level]
            per_group = {
                group: median(r["cpu_ms"][group] for r in steps) for group in steps[0]["cpu_ms"]
            }
            actors = sum(
                v
                for g, v in per_group.items()
                if g not in ("load generator", "server (HTTP + bridge)")
            )
            total = sum(per_group.values())
            ceiling = (os.cpu_count() or 1) * 1000 / total if total else float("nan")
            cpu_rows.append(
                [f"{route} c={level}", *per_group.values(), total, f"{ceiling:.0f}", actors]
            )
    cpu_table = table(
        "1d. (diagnostic) CPU time per request, ms (user + system, median of runs); the "
        f"ceiling is {os.cpu_count()} cores / total",
        [
            "route",
            "load gen",
            "server",
            "pool",
            "workers",
            "rest of session",
            "total",
            "ceiling req/s",
            "actors",
        ],
        cpu_rows,
        digits=3,
    )
    return [(main, targets), (direct, []), (decomposition, []), (cpu_table, [])]


# -- 2. restart latency -------------------------------------------------------------------------


def worker_status(asys: Any, root: Any, name: str) -> Any:
    reply = actor_system.ask(asys, root, StatusQuery(), 5)
    if not reply.ok:
        return None
    pool = next((c for c in reply.payload.children if c.name == GENERATOR), None)
    if pool is None:
        return None
    return next((w for w in pool.children if w.name == name), None)


def wait_worker_ready(
    asys: Any, root: Any, path: str, name: str, timeout: float
) -> tuple[Any, Any]:
    """The worker's status and address once it runs and answers Ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = worker_status(asys, root, name)
        if status is not None and status.state == "running" and status.pid:
            located = actor_system.ask(asys, root, WhereIs(path), 2)
            if located.ok:
                ponged = actor_system.ask(asys, located.payload.address, Ping(), 2)
                if ponged.ok and isinstance(ponged.payload, Pong):
                    return status, located.payload.address
        time.sleep(0.02)
    raise RuntimeError(f"{path} is not running and answering after {timeout:g} s")


def bench_restart(asys: Any, root: Any, mode: Mode) -> tuple[str, list[str]]:
    name = "worker-0"
    path = f"{GENERATOR}/{name}"
    samples: list[float] = []
    missed = 0
    for i in range(mode.kills):
        before, old_address = wait_worker_ready(asys, root, path, name, 10.0)
        killed_at = time.perf_counter()
        os.kill(before.pid, signal.SIGKILL)
        answered_at = None
        while time.perf_counter() - killed_at < RESTART_MAX_WAIT_S:
            located = actor_system.ask(asys, root, WhereIs(path), 0.5)
            if located.ok and located.payload.address != old_address:
                ponged = actor_system.ask(asys, located.payload.address, Ping(), 0.5)
                if ponged.ok and isinstance(ponged.payload, Pong):
                    answered_at = time.perf_counter()
                    break
            time.sleep(RESTART_POLL_S)
        after = worker_status(asys, root, name)
        if (
            answered_at is None
            or after is None
            or after.pid == before.pid
            or after.state != "running"
        ):
            missed += 1
            note(
                f"restart {i}: no new running {path} answered within "
                f"{RESTART_MAX_WAIT_S:g} s (status {after})"
            )
            continue
        samples.append((answered_at - killed_at) * 1000)
        time.sleep(0.05)
    rows = [
        [
            str(len(samples)),
            str(missed),
            median(samples),
            percentile(samples, 90),
            max(samples) if samples else float("nan"),
            min(samples) if samples else float("nan"),
        ]
    ]
    text = table(
        f"2. Restart latency: SIGKILL {path} -> its replacement answers Ping "
        f"({mode.kills} kills, polled every {RESTART_POLL_S * 1000:g} ms)",
        ["restarts", "missed", "median ms", "p90 ms", "max ms", "min ms"],
        rows,
    )
    med = median(samples)
    targets = [
        f"target: median restart <= {RESTART_MEDIAN_MS:.0f} ms   measured {med:.1f} ms"
        f"   {verdict(med <= RESTART_MEDIAN_MS and not missed)}"
    ]
    return text, targets


# -- 3, 4, 5. the daemon ---------------------------------------------------------------------


def daemon_memory(daemon_pid: int, admin_port: int) -> tuple[list[list[Any]], int]:
    """Rows by role (daemon, actor session, redis-server) and the total; and the count."""
    roles: dict[int, str] = {daemon_pid: "daemon (gateway)"}
    admin = actor_system.admin_pid(admin_port)
    if admin is None:
        raise RuntimeError(f"no actor admin listens on port {admin_port}")
    for proc in actor_system.session_processes(os.getsid(admin)):
        roles.setdefault(proc.pid, "actor session")
    for child in psutil.Process(daemon_pid).children(recursive=True):
        if child.pid not in roles and child.status() != psutil.STATUS_ZOMBIE:
            roles[child.pid] = (
                "embedded redis-server"
                if child.name() == "redis-server"
                else f"daemon child ({child.name()})"
            )
    measured: dict[str, list[tuple[float, float]]] = {}
    for pid, role in roles.items():
        info = psutil.Process(pid).memory_full_info()
        measured.setdefault(role, []).append((info.rss / MB, info.pss / MB))
    rows = []
    everything = [m for values in measured.values() for m in values]
    for role, values in list(measured.items()) + [("total", everything)]:
        rows.append(
            [
                role,
                str(len(values)),
                sum(v[0] for v in values),
                sum(v[1] for v in values),
                median(v[1] for v in values),
            ]
        )
    return rows, len(everything)


def make_meme(port: int, topic: str, fresh: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    status, meme = http_request(
        port, "POST", "/v1/memes", {"topic": topic, "fresh": fresh}, timeout=60
    )
    elapsed = (time.perf_counter() - started) * 1000
    if status != 201 or not isinstance(meme, dict) or "id" not in meme:
        raise RuntimeError(f"POST /v1/memes answered {status}: {str(meme)[:300]}")
    return elapsed, meme


def _provider(provider: Any) -> str:
    if isinstance(provider, dict):
        return "/".join(str(provider[k]) for k in ("name", "model") if k in provider)
    return str(provider)


def bench_daemon(
    mode: Mode, workdir: Path, cleanup: contextlib.ExitStack
) -> list[tuple[str, list[str]]]:
    ready_s, exit_s, leftovers = [], [], 0
    sections: list[tuple[str, list[str]]] = []
    first_meme: dict = {}
    memory_rows: list = []
    e2e_ms: list[float] = []
    stage_ms: dict[str, list[float]] = {}
    for run in range(mode.ready_reps):
        port, admin_port = free_port(), free_port()
        log_path = workdir / f"daemon-{run}.log"
        with open(log_path, "ab") as log:
            spawned = time.perf_counter()
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "run_system.py",
                    "--port",
                    str(port),
                    "--admin-port",
                    str(admin_port),
                    "--data-dir",
                    str(workdir / f"daemon-{run}"),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        cleanup.callback(stop_process, daemon, EXIT_MAX_WAIT_S)
        wait_http(port, "/readyz", daemon, READY_POLL_S, READY_MAX_WAIT_S, log_path)
        ready_s.append(time.perf_counter() - spawned)  # from the spawn, not the first poll
        sid = actor_system.session_id(admin_port)
        redis_pids = [
            c.pid for c in psutil.Process(daemon.pid).children() if c.name() == "redis-server"
        ]
        if run == 0:
            _, first_meme = make_meme(port, "benchmarks on a Tuesday", fresh=False)
            memory_rows, _ = daemon_memory(daemon.pid, admin_port)
            token = uuid.uuid4().hex[:6]
            for i in range(mode.memes):
                elapsed, meme = make_meme(port, f"bench {token} topic number {i}", fresh=True)
                e2e_ms.append(elapsed)
                for stage, ms in (meme.get("timings") or {}).items():
                    stage_ms.setdefault(stage, []).append(ms)
        stopping = time.perf_counter()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=EXIT_MAX_WAIT_S)
        except subprocess.TimeoutExpired:
            note(f"daemon pid {daemon.pid} did not exit within {EXIT_MAX_WAIT_S:g} s")
            daemon.kill()
            daemon.wait()
        exit_s.append(time.perf_counter() - stopping)
        if daemon.returncode != 0:
            note(f"daemon exited with {daemon.returncode}; log {log_path}")
        alive = wait_gone(sid, redis_pids, 5.0)
        if alive:
            note(f"daemon run {run}: {len(alive)} processes left over: {alive}; killing them")
            leftovers += kill_pids(alive)

    rows = [[f"run {i + 1}", r, e] for i, (r, e) in enumerate(zip(ready_s, exit_s))]
    rows.append(["median", median(ready_s), median(exit_s)])
    med = median(ready_s)
    sections.append(
        (
            table(
                f"3. Time to ready: spawn `python run_system.py` -> GET /readyz 200 (polled every "
                f"{READY_POLL_S * 1000:g} ms); SIGTERM -> exit",
                ["run", "ready s", "exit s"],
                rows,
            ),
            [
                f"target: median time to ready <= {READY_MEDIAN_S:.1f} s   measured {med:.2f} s   "
                f"{verdict(med <= READY_MEDIAN_S)}",
                f"check: POST /v1/memes made meme {first_meme.get('id')} "
                f"(format {first_meme.get('format')}, provider "
                f"{_provider(first_meme.get('provider'))})",
                f"check: processes left after SIGTERM: {leftovers}",
            ],
        )
    )
    sections.append(
        (
            table(
                "4. Daemon memory after one meme (psutil memory_full_info)",
                ["processes", "count", "RSS MB", "PSS MB", "PSS MB median/process"],
                memory_rows,
                digits=1,
            ),
            [],
        )
    )
    stage_rows = [
        [stage, median(values), percentile(values, 90)] for stage, values in stage_ms.items()
    ]
    sections.append(
        (
            table(
                f"5. (informative) End-to-end POST /v1/memes, fresh, {len(e2e_ms)} sequential "
                "memes",
                ["stage", "median ms", "p90 ms"],
                [["HTTP round trip", median(e2e_ms), percentile(e2e_ms, 90)]]
                + [[f"timings.{r[0]}", r[1], r[2]] for r in stage_rows],
            ),
            [],
        )
    )
    return sections


# -- main ---------------------------------------------------------------------------------------


def header(mode: Mode) -> str:
    import thespian

    commit = commit_description(REPO)
    thespian_version = getattr(thespian, "__version__", None)
    if thespian_version is None:
        from importlib.metadata import version

        thespian_version = version("thespian")
    return (
        f"memesys benchmark ({mode.name})  {datetime.datetime.now():%Y-%m-%d %H:%M}  "
        f"commit {commit}\n{platform.node()}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Thespian {thespian_version}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (< 60 s)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-"))
    failed: list[str] = []
    say(header(mode))
    say()

    def section(title: str, body: Callable[[], list[tuple[str, list[str]]]]) -> None:
        try:
            for text, lines in body():
                say(text)
                for line in lines:
                    say(line)
                say()
        except Exception:
            failed.append(title)
            say(f"{title}: FAILED\n{traceback.format_exc()}")

    if threading.active_count() != 1:
        raise SystemExit("bench.run: a thread exists before the actor system starts")
    # Restart intensity would escalate the 20+ kills of table 2 to the root; it is a policy,
    # not a cost, so the in-process tree allows many restarts. Everything else is default.
    cfg = load_config(
        overrides={
            ("supervision", "max_restarts"): 10_000,
            ("storage", "image_dir"): str(workdir / "images"),
        }
    )
    admin_port = free_port()
    with contextlib.ExitStack() as cleanup:
        note(f"work dir {workdir}; starting redis and the actor system on admin port {admin_port}")
        target, embedded = resolve("", str(workdir / "redis"))
        if embedded is not None:
            cleanup.callback(embedded.stop)
        with fd2_to(workdir / "actors.log"):
            asys = actor_system.start_system(
                actor_system.SystemConfig(admin_port, "127.0.0.1", logs.config_dict(cfg.log))
            )
        sid = actor_system.session_id(admin_port)
        root_box: list[Any] = [None]
        stopped = [False]

        def stop_actors() -> None:
            if not stopped[0]:
                stopped[0] = True
                killed = actor_system.shutdown(asys, admin_port, root_box[0], 10, sid)
                if killed:
                    note(f"killed {killed} actor processes left after shutdown")

        cleanup.callback(stop_actors)
        root_box[0] = actor_system.start_root(
            asys,
            with_echo_pool(root_spec(cfg, target.url), cfg),
            admin_port,
            cfg.system.ready_timeout_s,
        )
        note("tree up; measuring the gateway")
        section(
            "1. gateway",
            lambda: bench_gateway(asys, root_box[0], sid, admin_port, mode, workdir, cleanup),
        )
        note("measuring restarts")
        section("2. restart", lambda: [bench_restart(asys, root_box[0], mode)])
        stop_actors()
        if embedded is not None:
            embedded.stop()
        left = [p.pid for p in actor_system.session_processes(sid)] if sid else []
        if left:
            note(f"in-process actor session {sid} still has {left}; killing them")
            kill_pids(left)
        note("measuring the daemon")
        section("3-5. daemon", lambda: bench_daemon(mode, workdir, cleanup))

    say(f"total bench time {time.perf_counter() - began:.0f} s")
    if failed or args.keep:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
