"""The A/B benchmark of both engines: ``python -m bench.ab [--quick] [--keep]``.

In one run, against one fake OpenAI-compatible server (``memesys.testing.fake_openai``,
100 ms per completion), it starts ``python run_system.py`` daemons on free ports, each with a
data dir and embedded Redis of its own, and prints plain-text tables on stdout (progress goes
to stderr):

1. fresh memes (``"fresh": true``, distinct topics) at 1, 16 and 100 clients against a daemon
   with ``MEMESYS_SYSTEM_ENGINE=actors`` and one with ``=inprocess``, the two interleaved cell
   by cell: memes/s, p50, p99, errors by status and code, against the critical path as the
   daemons' ``[pipeline]`` configures it (select_write, the judging group: 2 LLM latencies =
   200 ms by default; select, write, the judging group: 3 = 300 ms with
   ``fuse_select_write`` off);
2. CPU ms per meme by process group of each daemon, read from /proc when each measuring window
   opens and closes;
3. cached memes (repeated non-fresh requests for one topic) on the actor daemon, against a
   bare aiohttp handler in a process of its own, both driven by the same load client;
4. the A/B split: a daemon with ``MEMESYS_SYSTEM_AB_SPLIT=0.3``, >= 1,000 fresh memes at 32
   clients, the ``engine`` of every answer counted and checked against /metrics;
5. every failed request, the processes left behind, and a summary of the targets.

It exits 1 when a target FAILs or a part could not run. The fresh-meme load client is
bench.pipeline's (``client_run`` in a subprocess); the cached/bare client and the bare server
are this module's (``--post-client``, ``--bare-server``). See bench/README.md.
"""

from __future__ import annotations

# First: bench.pipeline, an entry point, sets LITELLM_LOCAL_MODEL_COST_MAP for this process
# before anything imports dspy (bench.run, imported later, does too), and every process this
# bench starts gets it through bench.pipeline.base_env().
from bench import pipeline  # isort: skip

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    commit_description,
    http_request,
    median,
    table,
    verdict,
)
from bench.load import run_step
from memesys.config import PipelineConfig, load
from memesys.domain.engines import ACTORS, ENGINES, INPROCESS
from memesys.testing.ports import free_port

REPO = Path(__file__).resolve().parent.parent

LEVELS = (1, 16, 100)
CPU_LEVEL = 100  # the level the CPU and threads targets are read at
THREADS_MAX = 32  # any process of the actors daemon at CPU_LEVEL clients
WARMUP_CONCURRENCY = 4

# The workload (bench.pipeline's): 100 ms per completion, refinement off, so that every meme is
# select_write (or select -> write) -> the judging group (three verifiers and the scorer at
# once): critical_path.
JUDGING_GROUP = "judging group"

# Targets.
THROUGHPUT_RATIO = 1.5  # actors memes/s / inprocess memes/s at CPU_LEVEL clients
P50_WITHIN = 1.1  # actors p50 at 1 client / critical path
CPU_PER_MEME_MS = 25.0  # actors, at CPU_LEVEL clients, every process of the daemon (issue 16)
CACHED_P50_MS = 3.0  # cached meme, 1 client, keep-alive
CACHED_SHARE_OF_BARE = 0.20  # cached req/s / bare req/s at CACHED_CONCURRENCY clients
CACHED_CONCURRENCY = 64
AB_SHARE = 0.3  # MEMESYS_SYSTEM_AB_SPLIT
AB_TOLERANCE = 0.05  # |measured share - AB_SHARE| <= AB_TOLERANCE x AB_SHARE
AB_CONCURRENCY = 32

# The provider account behind the fake: no rate limit (the fake has none). The packaged default
# (10 req/s, a real account's size) would cap every daemon at about 1.6 memes/s and measure
# the limiter, not the engines; --llm-rps 10 runs with it.
DEFAULT_LLM_RPS = "0"

# What each daemon runs with, on top of bench.pipeline.Daemon's env (the fake as provider,
# refinement off) and the packaged defaults: no capacity override.
DAEMONS = {
    ACTORS: {"MEMESYS_SYSTEM_ENGINE": ACTORS},
    INPROCESS: {"MEMESYS_SYSTEM_ENGINE": INPROCESS},
    "split": {"MEMESYS_SYSTEM_ENGINE": ACTORS, "MEMESYS_SYSTEM_AB_SPLIT": str(AB_SHARE)},
}

# bench.pipeline's roles (Daemon.roles) folded into the groups this bench reports.
GROUPS = {
    "gateway (daemon process)": "gateway",
    "generator workers": "generator workers",
    "verifier workers": "verifier workers",
    "render workers": "render workers",
    "store workers": "store workers",
    "generator pool": "rest of the actor session",
    "verifier pool": "rest of the actor session",
    "render and store pools": "rest of the actor session",
    "rest of the actor session": "rest of the actor session",
    "redis-server (embedded)": "redis-server",
}
GROUP_ORDER = (
    "gateway",
    "generator workers",
    "verifier workers",
    "render workers",
    "store workers",
    "rest of the actor session",
    "redis-server",
)

POST_MARK = "mark"
BARE_ROLE = "bare server"
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Mode:
    name: str
    warmup_s: float  # per daemon, fresh memes at WARMUP_CONCURRENCY, not measured
    cells: dict[int, tuple[float, float, int]]  # clients -> (warm-up s, window s, repetitions)
    cached_warmup_s: float
    cached_s: float
    cached_reps: int
    ab_requests: int


FULL = Mode(
    "full",
    warmup_s=3.0,
    cells={1: (1.0, 6.0, 2), 16: (2.0, 6.0, 2), 100: (6.0, 10.0, 3)},
    cached_warmup_s=0.5,
    cached_s=3.0,
    cached_reps=3,
    ab_requests=1000,
)
QUICK = Mode(
    "quick",
    warmup_s=1.5,
    cells={1: (0.5, 3.0, 1), 16: (1.0, 3.0, 1), 100: (3.0, 6.0, 1)},
    cached_warmup_s=0.3,
    cached_s=1.0,
    cached_reps=1,
    ab_requests=300,
)


def say(text: str = "") -> None:
    print(text, flush=True)


_BEGAN = time.monotonic()


def note(text: str) -> None:
    print(f"[bench.ab {time.monotonic() - _BEGAN:5.0f} s] {text}", file=sys.stderr, flush=True)


def _run() -> Any:
    """bench.run's process helpers (stop_process, wait_gone, kill_pids, log_tail)."""
    from bench import run

    return run


# -- pure helpers (tests/test_bench_ab.py) --------------------------------------------------------


def critical_path(pipeline_cfg: PipelineConfig) -> tuple[str, ...]:
    """The LLM steps a meme waits for one after another, as ``[pipeline]`` configures them
    (refinement off): select_write, or select then write, then the judging group."""
    writing = ("select_write",) if pipeline_cfg.fuses_select_write else ("select", "write")
    return (*writing, JUDGING_GROUP)


def critical_path_ms(latency_s: float, steps: int) -> float:
    """``steps`` LLM latencies one after another."""
    return round(steps * latency_s * 1000, 6)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value), as Prometheus's own
    parser (``prometheus_client``) reads them."""
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def split_share(counts: dict[str, int], engine: str = INPROCESS) -> float:
    total = sum(counts.values())
    return counts.get(engine, 0) / total if total else float("nan")


def split_ok(share: float, expected: float = AB_SHARE, tolerance: float = AB_TOLERANCE) -> bool:
    """Within ±tolerance of the expected share (relative: 5 % of 0.3 is 0.285..0.315)."""
    return not math.isnan(share) and abs(share - expected) <= tolerance * expected + 1e-12


@dataclass
class Target:
    name: str
    measured: str
    ok: bool | None  # None: could not be measured (counts as FAIL)

    def line(self) -> str:
        return (
            f"target: {self.name}   measured {self.measured}   "
            f"{verdict(bool(self.ok)) if self.ok is not None else 'FAIL (not measured)'}"
        )


def exit_code(targets: Iterable[Target], failed_parts: Iterable[str]) -> int:
    """0 only when every target was measured and passed and every part ran."""
    return 0 if all(t.ok for t in targets) and not list(failed_parts) else 1


def errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "-"


# -- the cached/bare load client (its own process) ------------------------------------------------


async def post_client_main(plan: list[dict], warmup: float, duration: float) -> None:
    for step in plan:
        result = await run_step(
            step["port"],
            step["path"],
            step["concurrency"],
            warmup,
            duration,
            body=step["body"].encode(),
        )
        result.update({k: step[k] for k in ("route", "concurrency", "rep")})
        print(json.dumps(result), flush=True)


# -- the bare server (its own process) ------------------------------------------------------------


async def bare_server_main(port: int) -> None:
    """An aiohttp app with one handler, ``/bare`` (GET or POST): a small JSON at once, as
    bench.server's ``/bare``, without an actor system. SIGTERM or SIGINT stop it."""
    import itertools

    from aiohttp import web

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    counter = itertools.count()

    async def bare(request: web.Request) -> web.Response:
        return web.json_response({"echo": next(counter)})

    app = web.Application()
    app.add_routes([web.get("/bare", bare), web.post("/bare", bare)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"bare server ready on 127.0.0.1:{port}", flush=True)
    await stopping.wait()
    await runner.cleanup()


class BareServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "bare-server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.ab", "--bare-server", "--port", str(self.port)],
                cwd=REPO,
                env=pipeline.base_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self) -> None:
        _run().wait_http(self.port, "/bare", self.proc, 0.05, 30.0, self.log_path)


# -- the orchestrator's pieces --------------------------------------------------------------------


@dataclass
class Cell:
    """One engine at one level: every repetition's client result."""

    engine: str
    clients: int
    runs: list[dict] = field(default_factory=list)
    # the most threads of any process of the daemon (by group) during the runs, when watched
    threads: list[list[Any]] = field(default_factory=list)

    def med(self, key: str) -> float:
        return median(run[key] for run in self.runs)

    def errors(self) -> Counter[str]:
        """Every failed request of the cell: in the windows, the warm-ups and the drains."""
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run["errors"])
            total.update(run["errors_outside_window"])
        return total

    def memes(self) -> int:
        return sum(run["n"] for run in self.runs)

    def cpu_ms(self) -> dict[str, float]:
        """CPU ms per meme by group, the median over repetitions."""
        per_run = []
        for run in self.runs:
            if "cpu_s" in run and run["n"]:
                per_run.append({g: s * 1000 / run["n"] for g, s in run["cpu_s"].items()})
        groups = {g for run in per_run for g in run}
        return {g: median(run.get(g, 0.0) for run in per_run) for g in groups}

    def cores_busy(self, pick: Callable[[str], bool]) -> float:
        return median(
            sum(s for g, s in run["cpu_s"].items() if pick(g)) / run["window_s"]
            for run in self.runs
            if "cpu_s" in run
        )


def merged_threads(before: list[list[Any]], now: list[list[Any]]) -> list[list[Any]]:
    """[group, processes, most threads] rows of two watches: the most of each group."""
    rows = {row[0]: row for row in before}
    for group, processes, most in now:
        seen = rows.get(group)
        rows[group] = [group, processes, most if seen is None else max(seen[2], most)]
    return sorted(rows.values(), key=lambda row: -row[2])


def group_roles(daemon: Any, fake_pid: int | None = None) -> dict[int, str]:
    """pid -> group of every process of one daemon, plus the fake server."""
    roles = {
        pid: GROUPS.get(role, "rest of the actor session") for pid, role in daemon.roles().items()
    }
    if fake_pid is not None:
        roles[fake_pid] = pipeline.FAKE_ROLE
    return roles


def fetch_metrics(port: int) -> list[tuple[str, dict[str, str], float]]:
    status, body = http_request(port, "GET", "/metrics", timeout=10.0)
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    text = body.decode() if isinstance(body, bytes) else json.dumps(body)
    return parse_metrics(text)


def run_post_client(
    plan: list[dict],
    warmup: float,
    duration: float,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    meter: Any = None,
) -> list[dict]:
    """Runs the plan in one client process; with a meter, each step's result gets the CPU
    seconds by group of its window (``cpu_s``), the client's own as "load client"."""
    import psutil

    run = _run()
    log_path = workdir / "post-client.log"
    with open(log_path, "ab") as log:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.ab",
                "--post-client",
                "--plan",
                json.dumps(plan),
                "--warmup",
                str(warmup),
                "--duration",
                str(duration),
            ],
            cwd=REPO,
            env=pipeline.base_env(),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    cleanup.callback(run.stop_process, client)
    if meter is not None:
        meter.procs[client.pid] = (pipeline.CLIENT_ROLE, psutil.Process(client.pid))
    results, marks = [], {}
    for raw in client.stdout:
        line = json.loads(raw)
        if POST_MARK in line:
            if meter is not None:
                marks[line[POST_MARK]] = meter.snapshot()
            continue
        if meter is not None and "start" in marks and "end" in marks:
            line["cpu_s"] = meter.by_role(marks.pop("start"), marks.pop("end"))
        results.append(line)
    client.wait(timeout=30)
    if meter is not None:
        meter.procs.pop(client.pid, None)
    if client.returncode != 0 or len(results) != len(plan):
        raise RuntimeError(f"the post client failed; log {log_path}:\n{run.log_tail(log_path)}")
    return results


# -- 1 and 2: fresh memes by engine ---------------------------------------------------------------


def bench_engines(
    daemons: dict[str, Any],
    fake_pid: int,
    mode: Mode,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    failures: list[list[Any]],
    messages: dict[str, str],
) -> dict[tuple[str, int], Cell]:
    meters = {name: pipeline.CpuMeter(group_roles(daemons[name], fake_pid)) for name in ENGINES}
    cells = {(name, c): Cell(name, c) for name in ENGINES for c in LEVELS}
    for clients in LEVELS:
        warmup, window, reps = mode.cells[clients]
        for rep in range(reps):
            for name in ENGINES:  # interleaved: drift of the machine hits both engines alike
                note(
                    f"{name}: {clients} clients, {warmup:g} s warm-up + {window:g} s "
                    f"(run {rep + 1}/{reps})"
                )
                with pipeline.ThreadWatch(daemons[name]) as watch:
                    got = pipeline.run_client(
                        daemons[name].port,
                        clients,
                        warmup,
                        window,
                        workdir,
                        cleanup,
                        meters[name],
                        f"{name} c={clients}",
                    )
                cell = cells[(name, clients)]
                cell.runs.append(got)
                cell.threads = merged_threads(cell.threads, watch.by_role())
                pipeline._merge(messages, got["examples"])
    for (name, clients), cell in cells.items():
        errs = cell.errors()
        failures.append(
            [
                f"{name}, {clients} clients (windows, warm-ups, drains)",
                sum(
                    r["n"] + sum(r["errors"].values()) + r["completed_outside_window"]
                    for r in cell.runs
                ),
                sum(errs.values()),
                errors_text(errs),
            ]
        )
    return cells


def report_engines(
    cells: dict[tuple[str, int], Cell],
    mode: Mode,
    path: tuple[str, ...],
    cp_ms: float,
    targets: list[Target],
) -> list[str]:
    out = []
    rows = []
    for clients in LEVELS:
        for name in ENGINES:
            cell = cells[(name, clients)]
            errs = cell.errors()
            rows.append(
                [
                    f"{name}",
                    clients,
                    len(cell.runs),
                    cell.memes(),
                    cell.med("rate"),
                    cell.med("p50_ms"),
                    cell.med("p99_ms"),
                    sum(errs.values()),
                    errors_text(errs),
                ]
            )
    out.append(
        table(
            "1. Fresh memes by engine: N clients (aiohttp, keep-alive, loopback) posting fresh "
            "memes "
            "with distinct topics back to back; a meme counts when it completes inside the window "
            "(after the warm-up); median over runs; errors = every failed request of the cell "
            "(windows, warm-ups, drains)",
            [
                "engine",
                "clients",
                "runs",
                "memes",
                "memes/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "errors by status and code",
            ],
            rows,
        )
    )
    lines = [
        f"critical path = {' -> '.join(path)} (three verifiers and the scorer "
        f"at once) = {len(path)} LLM latencies = {cp_ms:.0f} ms "
        "(the render runs during judging, refinement is off)"
    ]
    wrong = []
    for (name, clients), cell in cells.items():
        engines = Counter()
        for run in cell.runs:
            engines.update(run.get("engines", {}))
        if set(engines) - {name}:
            wrong.append(f"{name} c={clients}: {dict(engines)}")
    lines.append(
        "check: every meme names its daemon's engine: "
        + ("yes" if not wrong else "NO: " + "; ".join(wrong))
    )
    act, inp = cells[(ACTORS, CPU_LEVEL)], cells[(INPROCESS, CPU_LEVEL)]
    ratio = act.med("rate") / inp.med("rate") if inp.med("rate") else float("nan")
    targets.append(
        Target(
            f"actors memes/s >= {THROUGHPUT_RATIO:g}x inprocess at {CPU_LEVEL} clients",
            f"{act.med('rate'):.1f} / {inp.med('rate'):.1f} = {ratio:.2f}x",
            None if math.isnan(ratio) else ratio >= THROUGHPUT_RATIO,
        )
    )
    threads = act.threads
    most = max((row[2] for row in threads), default=0)
    lines.append(
        f"threads: the most in one process of the actors daemon at {CPU_LEVEL} clients: "
        + ", ".join(f"{group} {n} ({processes} processes)" for group, processes, n in threads)
    )
    targets.append(
        Target(
            f"threads of any actors-daemon process at {CPU_LEVEL} clients <= {THREADS_MAX}",
            f"{most} (/proc/<pid>/status every {pipeline.THREAD_SAMPLE_S:g} s)",
            None if not threads else most <= THREADS_MAX,
        )
    )
    p50 = cells[(ACTORS, 1)].med("p50_ms")
    targets.append(
        Target(
            f"actors p50 at 1 client <= {P50_WITHIN:g} x critical path = "
            f"{P50_WITHIN * cp_ms:.0f} ms",
            f"{p50:.1f} ms ({p50 / cp_ms:.3f} x {cp_ms:.0f} ms)",
            None if math.isnan(p50) else p50 <= P50_WITHIN * cp_ms,
        )
    )
    for name in ENGINES:
        total = sum(sum(cells[(name, c)].errors().values()) for c in LEVELS)
        worst = {f"c={c}": sum(cells[(name, c)].errors().values()) for c in LEVELS}
        targets.append(
            Target(
                f"0 errors in every cell, {name} engine",
                f"{total} ({', '.join(f'{k}: {v}' for k, v in worst.items())})",
                total == 0,
            )
        )
    out.extend(lines)
    out.append("")

    # Diagnostic: where one meme's time goes, from the responses' timings at 1 client.
    stages = ("select", "write", "select_write", "judge", "render", "pipeline", "store", "total")
    stage_rows = []
    for stage in stages:
        stage_rows.append(
            [
                f"timings.{stage}",
                *(
                    median(run["timings"].get(stage, float("nan")) for run in cells[(name, 1)].runs)
                    for name in ENGINES
                ),
            ]
        )
    stage_rows.append(
        ["HTTP round trip p50 (client)", *(cells[(name, 1)].med("p50_ms") for name in ENGINES)]
    )
    stage_rows.append(
        [
            "HTTP round trip p50 - critical path",
            *(cells[(name, 1)].med("p50_ms") - cp_ms for name in ENGINES),
        ]
    )
    out.append(
        table(
            "1b. (diagnostic) one client: median stage timings of the answers, ms",
            ["stage", *ENGINES],
            stage_rows,
        )
    )
    return out


def report_cpu(cells: dict[tuple[str, int], Cell], targets: list[Target]) -> list[str]:
    outside = (pipeline.FAKE_ROLE, pipeline.CLIENT_ROLE, pipeline.OTHERS)
    per = {key: cell.cpu_ms() for key, cell in cells.items()}
    columns = [(name, c) for name in ENGINES for c in LEVELS]
    rows = [[group, *(per[key].get(group, 0.0) for key in columns)] for group in GROUP_ORDER]
    totals = {key: sum(per[key].get(g, 0.0) for g in GROUP_ORDER) for key in columns}
    rows.append(["total (the daemon)", *(totals[key] for key in columns)])
    for role in outside:
        rows.append([f"{role} (not in the total)", *(per[key].get(role, 0.0) for key in columns)])
    rows.append(
        [
            "cores busy: the daemon",
            *(cells[key].cores_busy(lambda g: g not in outside) for key in columns),
        ]
    )
    rows.append(
        [
            "cores busy: the whole machine",
            *(cells[key].cores_busy(lambda g: True) for key in columns),
        ]
    )
    out = [
        table(
            "2. CPU ms per meme by process group (user + system of every process of the daemon, "
            "read from /proc when each window opens and closes, divided by the memes completed in "
            "it; median over runs)",
            ["process group", *(f"{name[:5]} c={c}" for name, c in columns)],
            rows,
            digits=1,
        )
    ]
    cores = pipeline.cpu_cores()
    for key in columns:
        stolen = cells[key].cores_busy(lambda g: g == pipeline.OTHERS)
        if stolen > 0.05 * cores:
            out.append(
                f"warning: other processes took {stolen:.2f} cores in the {key[0]} "
                f"c={key[1]} windows (the idle daemon of the other engine included)"
            )
    # Informative: what idle cores would allow at CPU_LEVEL, from each daemon's own CPU per
    # meme. The in-process engine's memes are made in one process whose Python runs under one
    # GIL: about one core of gateway work at most (C code that drops the GIL aside).
    act_ceiling = cores / (totals[(ACTORS, CPU_LEVEL)] / 1000)
    gateway_ms = per[(INPROCESS, CPU_LEVEL)].get("gateway", float("nan"))
    inp_ceiling = min(cores / (totals[(INPROCESS, CPU_LEVEL)] / 1000), 1000 / gateway_ms)
    taken = {
        key[0]: cells[key].cores_busy(lambda g: g in outside)
        for key in columns
        if key[1] == CPU_LEVEL
    }
    out.append(
        f"(informative) CPU ceilings at {CPU_LEVEL} clients with {cores} idle cores: "
        f"actors {cores} / {totals[(ACTORS, CPU_LEVEL)]:.1f} ms = {act_ceiling:.1f} "
        f"memes/s; inprocess min({cores} / {totals[(INPROCESS, CPU_LEVEL)]:.1f} ms, "
        f"1 core / {gateway_ms:.1f} ms of gateway: one process, its Python under one "
        f"GIL) = "
        f"{inp_ceiling:.1f} memes/s; ratio {act_ceiling / inp_ceiling:.2f}x. In the "
        f"windows the fake, the client and other processes took "
        f"{taken.get(ACTORS, float('nan')):.2f} (actors) and "
        f"{taken.get(INPROCESS, float('nan')):.2f} (inprocess) cores"
    )
    act = totals[(ACTORS, CPU_LEVEL)]
    targets.append(
        Target(
            f"actors CPU per meme <= {CPU_PER_MEME_MS:g} ms at {CPU_LEVEL} clients",
            f"{act:.1f} ms (inprocess {totals[(INPROCESS, CPU_LEVEL)]:.1f} ms)",
            None if math.isnan(act) or act == 0 else act <= CPU_PER_MEME_MS,
        )
    )
    return out


# -- 3: cached memes ------------------------------------------------------------------------------


def bench_cached(
    daemon: Any,
    bare: BareServer,
    mode: Mode,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    targets: list[Target],
    failures: list[list[Any]],
) -> list[str]:
    topic = f"bench ab cached {uuid.uuid4().hex[:8]}"
    body = json.dumps({"topic": topic})
    status, first = http_request(
        daemon.port, "POST", "/v1/memes", {"topic": topic}, timeout=REQUEST_TIMEOUT_S
    )
    if status != 201:
        raise RuntimeError(f"the first meme for the cached topic failed: {status} {first}")
    status, again = http_request(daemon.port, "POST", "/v1/memes", {"topic": topic})
    if status != 201 or not isinstance(again, dict) or again.get("cached") is not True:
        raise RuntimeError(
            f"the second request was not answered from the cache: {status} {str(again)[:200]}"
        )
    before = fetch_metrics(daemon.port)
    plan = []
    for rep in range(mode.cached_reps):  # interleaved, so drift hits both routes alike
        for clients in (1, CACHED_CONCURRENCY):
            plan.append(
                {
                    "route": "bare",
                    "port": bare.port,
                    "path": "/bare",
                    "body": body,
                    "concurrency": clients,
                    "rep": rep,
                }
            )
            plan.append(
                {
                    "route": "cached",
                    "port": daemon.port,
                    "path": "/v1/memes",
                    "body": body,
                    "concurrency": clients,
                    "rep": rep,
                }
            )
    note(
        f"cached memes and bare handler: {len(plan)} steps of {mode.cached_warmup_s:g} s "
        f"warm-up + {mode.cached_s:g} s"
    )
    roles = group_roles(daemon)
    roles[bare.proc.pid] = BARE_ROLE
    meter = pipeline.CpuMeter(roles)
    results = run_post_client(plan, mode.cached_warmup_s, mode.cached_s, workdir, cleanup, meter)
    after = fetch_metrics(daemon.port)
    hits = metric_sum(after, "memesys_cache_hits_total") - metric_sum(
        before, "memesys_cache_hits_total"
    )
    made = metric_sum(after, "memesys_memes_total") - metric_sum(before, "memesys_memes_total")
    answered = sum(r["ok_total"] for r in results if r["route"] == "cached")

    def pick(route: str, clients: int, key: str) -> float:
        return median(
            r[key] for r in results if r["route"] == route and r["concurrency"] == clients
        )

    rows = []
    for clients in (1, CACHED_CONCURRENCY):
        for route in ("bare", "cached"):
            errs: Counter[str] = Counter()
            for r in results:
                if r["route"] == route and r["concurrency"] == clients:
                    errs.update(r["errors"])
            rows.append(
                [
                    route,
                    clients,
                    pick(route, clients, "p50_ms"),
                    pick(route, clients, "p99_ms"),
                    pick(route, clients, "rps"),
                    sum(errs.values()),
                    errors_text(errs),
                ]
            )
            failures.append(
                [
                    f"{route} route, {clients} clients",
                    sum(
                        r["n"] + sum(r["errors"].values())
                        for r in results
                        if r["route"] == route and r["concurrency"] == clients
                    ),
                    sum(errs.values()),
                    errors_text(errs),
                ]
            )
    share = pick("cached", CACHED_CONCURRENCY, "rps") / pick("bare", CACHED_CONCURRENCY, "rps")
    out = [
        table(
            f"3. Cached memes: repeated non-fresh POST /v1/memes for one topic already made, on "
            f"the actors daemon, against a bare aiohttp handler (POST /bare, the same body, a "
            f"small JSON "
            f"at once, its own process); one load client for both (aiohttp, keep-alive); "
            f"{mode.cached_reps} run(s) of {mode.cached_s:g} s after {mode.cached_warmup_s:g} s "
            f"per cell, interleaved, median",
            ["route", "clients", "p50 ms", "p99 ms", "req/s", "errors", "by status"],
            rows,
        ),
        f"check: memesys_cache_hits_total grew by {hits:.0f} for {answered} cached answers "
        f"(warm-ups included); memesys_memes_total grew by {made:.0f} (0 expected): "
        + ("agrees" if hits == answered and made == 0 else "DISAGREES"),
    ]
    out.append("")
    out.append(cached_cpu(results))
    p50 = pick("cached", 1, "p50_ms")
    targets.append(
        Target(
            f"cached meme p50 at 1 client <= {CACHED_P50_MS:g} ms",
            f"{p50:.2f} ms (bare {pick('bare', 1, 'p50_ms'):.2f} ms)",
            None if math.isnan(p50) else p50 <= CACHED_P50_MS,
        )
    )
    targets.append(
        Target(
            f"cached req/s >= {CACHED_SHARE_OF_BARE:.0%} of bare at {CACHED_CONCURRENCY} clients",
            f"{pick('cached', CACHED_CONCURRENCY, 'rps'):.0f} / "
            f"{pick('bare', CACHED_CONCURRENCY, 'rps'):.0f} = {share:.1%}",
            None if math.isnan(share) else share >= CACHED_SHARE_OF_BARE,
        )
    )
    return out


def cached_cpu(results: list[dict]) -> str:
    """3b: CPU ms per request by process group, each route and level (median over runs)."""
    columns = [(route, c) for c in (1, CACHED_CONCURRENCY) for route in ("bare", "cached")]
    per: dict[tuple[str, int], dict[str, float]] = {}
    for key in columns:
        runs = [
            r for r in results if (r["route"], r["concurrency"]) == key and "cpu_s" in r and r["n"]
        ]
        groups = {g for r in runs for g in r["cpu_s"]}
        per[key] = {g: median(r["cpu_s"].get(g, 0.0) * 1000 / r["n"] for r in runs) for g in groups}
    outside = (pipeline.CLIENT_ROLE, pipeline.OTHERS)
    shown = [
        g
        for g in (*GROUP_ORDER, BARE_ROLE)
        if any(per[key].get(g, 0.0) >= 0.0005 for key in columns)
    ]
    rows = [[g, *(per[key].get(g, 0.0) for key in columns)] for g in shown]
    rows.append(
        [
            "total (the server: the daemon, or the bare server)",
            *(sum(per[key].get(g, 0.0) for g in (*GROUP_ORDER, BARE_ROLE)) for key in columns),
        ]
    )
    rows += [
        [f"{g} (not in the total)", *(per[key].get(g, 0.0) for key in columns)] for g in outside
    ]
    return table(
        "3b. (diagnostic) CPU ms per request by process group (from /proc over each "
        "window, median over runs)",
        ["process group", *(f"{route} c={c}" for route, c in columns)],
        rows,
        digits=3,
    )


# -- 4: the A/B split -----------------------------------------------------------------------------


def bench_split(
    daemon: Any,
    mode: Mode,
    rate_hint: float,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    targets: list[Target],
    failures: list[list[Any]],
    messages: dict[str, str],
) -> list[str]:
    before = fetch_metrics(daemon.port)
    engines: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies_p50, runs, answered, spent = [], 0, 0, 0.0
    while answered < mode.ab_requests and runs < 5:
        remaining = mode.ab_requests - answered
        duration = min(120.0, max(5.0, 1.2 * remaining / max(rate_hint, 1.0)))
        note(
            f"A/B split: {AB_CONCURRENCY} clients for {duration:.0f} s "
            f"({answered}/{mode.ab_requests} answered so far)"
        )
        got = pipeline.run_client(
            daemon.port, AB_CONCURRENCY, 0.0, duration, workdir, cleanup, None, "A/B split"
        )
        runs += 1
        spent += got["wall_s"]
        engines.update(got.get("engines", {}))
        errors.update(got["errors"])
        errors.update(got["errors_outside_window"])
        answered = sum(engines.values())
        latencies_p50.append(got["p50_ms"])
        pipeline._merge(messages, got["examples"])
        rate_hint = max(got["rate"], 1.0)
    after = fetch_metrics(daemon.port)
    counted = {
        name: metric_sum(after, "memesys_memes_total", engine=name, cached="false")
        - metric_sum(before, "memesys_memes_total", engine=name, cached="false")
        for name in ENGINES
    }
    cached = metric_sum(after, "memesys_memes_total", cached="true") - metric_sum(
        before, "memesys_memes_total", cached="true"
    )
    failed = {
        name: metric_sum(after, "memesys_memes_failed_total", engine=name)
        - metric_sum(before, "memesys_memes_failed_total", engine=name)
        for name in ENGINES
    }
    failures.append(
        [
            f"A/B split, {AB_CONCURRENCY} clients",
            answered + sum(errors.values()),
            sum(errors.values()),
            errors_text(errors),
        ]
    )
    share = split_share(dict(engines))
    total = sum(engines.values())
    rows = [
        [
            name,
            engines.get(name, 0),
            engines.get(name, 0) / total if total else float("nan"),
            counted[name],
            failed[name],
        ]
        for name in ENGINES
    ]
    others = {k: v for k, v in engines.items() if k not in ENGINES}
    for name, count in others.items():
        rows.append([name, count, count / total, 0, 0])
    rows.append(["total", total, 1.0, sum(counted.values()), sum(failed.values())])
    agree = (
        all(counted[name] == engines.get(name, 0) for name in ENGINES)
        and not others
        and cached == 0
    )
    out = [
        table(
            f"4. The A/B split: a daemon with MEMESYS_SYSTEM_ENGINE=actors, "
            f"MEMESYS_SYSTEM_AB_SPLIT={AB_SHARE:g}; {AB_CONCURRENCY} clients posting fresh memes "
            f"(distinct topics), every answer counted ({runs} run(s), {spent:.0f} s, "
            f"p50 {median(latencies_p50):.0f} ms, {sum(errors.values())} failed: "
            f"{errors_text(errors)})",
            [
                "engine",
                "answers",
                "share",
                "memesys_memes_total delta",
                "memesys_memes_failed_total delta",
            ],
            rows,
        ),
        f'check: /metrics memesys_memes_total{{cached="false"}} by engine equals the answers\' '
        f"counts, and no cached meme: {'yes' if agree else 'NO'} (cached delta {cached:.0f})",
    ]
    targets.append(
        Target(
            f">= {mode.ab_requests} answers and the inprocess share within ±{AB_TOLERANCE:.0%} of "
            f"{AB_SHARE:g} ({AB_SHARE * (1 - AB_TOLERANCE):.3f}.."
            f"{AB_SHARE * (1 + AB_TOLERANCE):.3f})",
            f"{engines.get(INPROCESS, 0)} / {total} = {share:.4f}",
            total >= mode.ab_requests and split_ok(share),
        )
    )
    targets.append(
        Target(
            "the A/B split's /metrics memesys_memes_total by engine agrees with the answers",
            "yes" if agree else "no",
            agree,
        )
    )
    return out


# -- main -----------------------------------------------------------------------------------------


def header(mode: Mode, llm_rps: str) -> str:
    import psutil

    busy = psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1)
    env = dict(pipeline.BENCH_ENV, MEMESYS_LLM_RATE_LIMIT_RPS=llm_rps)
    return "\n".join(
        [
            f"memesys A/B benchmark of both engines ({mode.name})  "
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}  commit {commit_description(REPO)}",
            f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {busy:.2f} cores busy "
            "in the second before the start",
            f"fake provider: memesys.testing.fake_openai, {pipeline.FAKE_LATENCY_S * 1000:.0f} ms "
            "per completion",
            "daemons: packaged defaults (no capacity override) + "
            + " ".join(f"{k}={v}" for k, v in env.items())
            + " OPENAI_BASE_URL=<fake>",
            "  "
            + "; ".join(
                f"{name}: " + " ".join(f"{k}={v}" for k, v in extra.items())
                for name, extra in DAEMONS.items()
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (~1.5 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--llm-rps",
        default=DEFAULT_LLM_RPS,
        help="MEMESYS_LLM_RATE_LIMIT_RPS of the daemons (default 0: the fake "
        "has no limit; 10 is the packaged default)",
    )
    parser.add_argument("--post-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=0.5, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.post_client:
        asyncio.run(post_client_main(json.loads(args.plan), args.warmup, args.duration))
        return 0
    if args.bare_server:
        asyncio.run(bare_server_main(args.port))
        return 0
    return orchestrate(QUICK if args.quick else FULL, args.keep, args.llm_rps)


def orchestrate(mode: Mode, keep: bool, llm_rps: str) -> int:
    run = _run()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-ab-"))
    say(header(mode, llm_rps))
    say()
    failed: list[str] = []
    targets: list[Target] = []
    failures: list[list[Any]] = []  # phase, requests, failed, by status
    messages: dict[str, str] = {}
    leftovers: dict[str, list[int]] = {}
    started: list[int] = []

    def section(title: str, body: Callable[[], list[str]]) -> Any:
        try:
            for text in body():
                say(text)
            say()
            return True
        except Exception:
            failed.append(title)
            say(f"{title}: FAILED\n{traceback.format_exc()}")
            return False

    def start_daemon(name: str) -> Any:
        extra = dict(DAEMONS[name], MEMESYS_LLM_RATE_LIMIT_RPS=llm_rps)
        daemon = pipeline.Daemon("parallel", fake_url, workdir, name=name, env=extra).start()
        cleanup.callback(daemon.stop)
        started.append(daemon.proc.pid)
        return daemon

    def ready(daemon: Any) -> None:
        daemon.wait_ready()
        note(
            f"{daemon.name} daemon pid {daemon.proc.pid} ready on port {daemon.port} "
            f"(actor session {daemon.sid}, redis-server {daemon.redis_pids})"
        )
        started.extend(daemon.redis_pids)

    def warm(daemon: Any) -> None:
        note(
            f"warming up the {daemon.name} daemon: {mode.warmup_s:g} s at "
            f"{WARMUP_CONCURRENCY} clients"
        )
        got = pipeline.run_client(
            daemon.port, WARMUP_CONCURRENCY, 0.0, mode.warmup_s, workdir, cleanup, None, "warm-up"
        )
        errs = Counter(got["errors"]) + Counter(got["errors_outside_window"])
        pipeline._merge(messages, got["examples"])
        failures.append(
            [
                f"warm-up, {daemon.name}, {WARMUP_CONCURRENCY} clients (not a cell)",
                got["n"] + got["completed_outside_window"],
                sum(errs.values()),
                errors_text(errs),
            ]
        )

    def stop(name: str, daemon: Any) -> None:
        leftovers[f"{name} daemon"] = daemon.stop()

    cells: dict[tuple[str, int], Cell] = {}
    with contextlib.ExitStack() as cleanup:
        note(f"work dir {workdir}")
        fake = pipeline.Fake(workdir)
        cleanup.callback(run.stop_process, fake.proc)
        started.append(fake.proc.pid)
        fake_url = fake.wait_ready()
        note(f"fake server pid {fake.proc.pid} at {fake_url}")
        daemons = {name: start_daemon(name) for name in ENGINES}
        # both engines' daemons run one [pipeline] configuration
        path = critical_path(load(env=daemons[ACTORS].env).pipeline)
        cp_ms = critical_path_ms(pipeline.FAKE_LATENCY_S, len(path))
        bare: BareServer | None = None
        try:
            for daemon in daemons.values():
                ready(daemon)
            for daemon in daemons.values():
                warm(daemon)
        except Exception:
            failed.append("start")
            say(f"start: FAILED\n{traceback.format_exc()}")
        if not failed:

            def engines_part() -> list[str]:
                cells.update(
                    bench_engines(
                        daemons, fake.proc.pid, mode, workdir, cleanup, failures, messages
                    )
                )
                out = report_engines(cells, mode, path, cp_ms, targets)
                out.append("")
                out.extend(report_cpu(cells, targets))
                return out

            section("1-2. fresh memes by engine", engines_part)
            stop(INPROCESS, daemons[INPROCESS])
            split = start_daemon("split")
            bare = BareServer(workdir)
            cleanup.callback(run.stop_process, bare.proc)
            started.append(bare.proc.pid)

            def cached_part() -> list[str]:
                ready(split)  # started now, so that it is up when its turn comes
                bare.wait_ready()
                return bench_cached(
                    daemons[ACTORS], bare, mode, workdir, cleanup, targets, failures
                )

            section("3. cached memes", cached_part)
            stop("bare server", _Stoppable(bare.proc))
            # the A/B part's first guess of its rate at 32 clients (it runs on until enough)
            rates = [
                cells[(ACTORS, c)].med("rate")
                for c in (16, 100)
                if (ACTORS, c) in cells and cells[(ACTORS, c)].runs
            ]
            actors_rate = max([r for r in rates if r == r] or [10.0])
            stop(ACTORS, daemons[ACTORS])

            def split_part() -> list[str]:
                if split.sid is None:
                    ready(split)
                return bench_split(
                    split, mode, actors_rate, workdir, cleanup, targets, failures, messages
                )

            section("4. the A/B split", split_part)
            stop("split", split)
        for name, daemon in daemons.items():
            if not daemon.stopped:
                stop(name, daemon)
        leftovers["fake server"] = fake.stop()

    say(
        table(
            "5. Failed requests (status and error code)",
            ["phase", "requests", "failed", "by status and code"],
            failures,
        )
    )
    for kind, message in sorted(messages.items()):
        say(f"first message of {kind}: {message}")
    say(pipeline.leftovers_check(started, leftovers))
    say()
    say("Targets")
    for target in targets:
        say(target.line())
    for title in failed:
        say(f"part {title}: could not run (FAIL)")
    passed = sum(1 for t in targets if t.ok)
    code = exit_code(targets, failed)
    say(f"{passed} of {len(targets)} targets PASS; exit {code}")
    say(f"total bench time {time.perf_counter() - began:.0f} s")
    if failed or keep:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


class _Stoppable:
    """A plain process as ``stop()`` expects it: SIGTERM, wait, leftovers by pid."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def stop(self) -> list[int]:
        return pipeline.stop_plain(self.proc, "the bare server")


if __name__ == "__main__":
    sys.exit(main())
