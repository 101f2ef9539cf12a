"""The load generator: ``python -m bench.load --port P --plan JSON``.

A separate process (its own GIL) with an aiohttp client: for each step of the plan, N workers
with keep-alive connections on loopback send GET requests back to back for a warm-up, then for
a fixed duration, and the step's per-request latencies are summarised. One JSON line per step
goes to stdout: ``{"route", "concurrency", "rep", "n", "errors", "p50_ms", "p99_ms", "rps"}``,
preceded by ``{"mark": route}`` when the warm-up ends (the bench reads CPU times there).

A plan is a JSON list of ``{"route": "/bare", "concurrency": 16, "rep": 0}``; ``--duration``
and ``--warmup`` apply to every step.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

from bench.common import percentile


async def run_step(port: int, route: str, concurrency: int, warmup: float,
                   duration: float) -> dict:
    url = f"http://127.0.0.1:{port}{route}"
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        begin = time.perf_counter()
        measure_from = begin + warmup
        end = measure_from + duration
        asyncio.get_running_loop().call_later(
            warmup, lambda: print(json.dumps({"mark": route}), flush=True))

        async def worker() -> None:
            nonlocal errors
            while True:
                start = time.perf_counter()
                if start >= end:
                    return
                try:
                    async with session.get(url) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                done = time.perf_counter()
                if start >= measure_from:
                    if ok:
                        latencies.append(done - start)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        finished = time.perf_counter()
    window = finished - measure_from
    ms = [s * 1000 for s in latencies]
    return {"route": route, "concurrency": concurrency, "n": len(ms), "errors": errors,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "rps": len(ms) / window if window > 0 else 0.0}


async def main_async(args: argparse.Namespace) -> None:
    for step in json.loads(args.plan):
        result = await run_step(args.port, step["route"], step["concurrency"], args.warmup,
                                args.duration)
        result["rep"] = step.get("rep", 0)
        print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
