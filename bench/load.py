"""The load generator: ``python -m bench.load --port P --plan JSON``.

A separate process (its own GIL) with an aiohttp client: for each step of the plan, N workers
with keep-alive connections on loopback send GET requests back to back for a warm-up, then for
a fixed duration, and the step's per-request latencies are summarised. One JSON line per step
goes to stdout: ``{"route", "concurrency", "rep", "n", "errors", "ok_total", "p50_ms",
"p99_ms", "rps"}`` (``errors`` by kind), preceded by ``{"mark": "start"}`` and
``{"mark": "end"}`` when the window opens and closes (the bench reads CPU times there).
:func:`run_step` also POSTs a JSON body (``bench.ab``'s cached-meme client).

A plan is a JSON list of ``{"route": "/bare", "concurrency": 16, "rep": 0}``; ``--duration``
and ``--warmup`` apply to every step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from bench.common import percentile


async def run_step(
    port: int,
    route: str,
    concurrency: int,
    warmup: float,
    duration: float,
    body: bytes | None = None,
) -> dict:
    """``concurrency`` keep-alive workers send ``route`` back to back: a GET, or a POST of
    ``body`` (JSON) when given. A request counts in the window when it starts after the
    warm-up and before the end; ``{"mark": "start"}`` and ``{"mark": "end"}`` are printed when
    the window opens and closes (the benches read CPU times there). ``errors``: the window's
    failures by kind (a status, or the client's exception); ``ok_total``: every 2xx answer,
    warm-up included."""
    url = f"http://127.0.0.1:{port}{route}"
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ok_total = 0
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        begin = time.perf_counter()
        measure_from = begin + warmup
        end = measure_from + duration
        loop = asyncio.get_running_loop()
        loop.call_later(warmup, lambda: print(json.dumps({"mark": "start"}), flush=True))
        loop.call_later(warmup + duration, lambda: print(json.dumps({"mark": "end"}), flush=True))

        def send() -> Any:
            if body is None:
                return session.get(url)
            return session.post(url, data=body, headers=headers)

        async def worker() -> None:
            nonlocal ok_total
            while True:
                start = time.perf_counter()
                if start >= end:
                    return
                try:
                    async with send() as response:
                        await response.read()
                        failure = None if 200 <= response.status < 300 else str(response.status)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    failure = f"client {type(exc).__name__}"
                done = time.perf_counter()
                if failure is None:
                    ok_total += 1
                if start >= measure_from:
                    if failure is None:
                        latencies.append((done - start) * 1000)
                    else:
                        errors[failure] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        finished = time.perf_counter()
    window = finished - measure_from
    return {
        "route": route,
        "concurrency": concurrency,
        "n": len(latencies),
        "errors": dict(errors),
        "ok_total": ok_total,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": len(latencies) / window if window > 0 else 0.0,
    }


async def main_async(args: argparse.Namespace) -> None:
    for step in json.loads(args.plan):
        result = await run_step(
            args.port, step["route"], step["concurrency"], args.warmup, args.duration
        )
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
