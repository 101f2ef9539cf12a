"""CPU of one LLM stage call: ``python -m bench.profile_stage_call [--quick] [--calls N]``.

Runs the ``factuality`` verifier (``memesys.pipeline.verification.verify``) through the stage
handles the daemon builds (``memesys.pipeline.lm.stage_handles``: DSPy, the HTTP client,
the retry layer, breaker and limiter with their state on Redis) against the fake provider at
0 ms latency, and prints the process CPU ms per call after a warm-up. It starts the fake
(``memesys.testing.fake_openai``, bench.llm's ``Fake``) and an embedded Redis in a temporary
directory, and stops both before it exits. The figures this measured are in
docs/perf/2026-12-01-llm-and-messages-cpu.md.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports dspy

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from bench.llm import API_KEY, MODEL, Fake
from memesys.config import load_layers
from memesys.pipeline import dspy_patches
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import stage_handles
from memesys.pipeline.verification import verify
from memesys.pipeline.writing import Caption
from memesys.storage.connection import resolve

STAGE_TIMEOUT_S = 20.0
VERIFIER = "factuality"


def cpu_ms_per_call(fake_url: str, redis_url: str, warmup: int, calls: int) -> float:
    cfg = load_layers(
        None,
        env={
            "MEMESYS_LLM_API_KEY": API_KEY,
            "MEMESYS_LLM_MODEL": MODEL,
            "MEMESYS_LLM_BASE_URL": fake_url,
            "MEMESYS_LLM_RATE_LIMIT_RPS": "0",
        },
    ).build()
    handle = stage_handles(cfg.llm, STAGE_TIMEOUT_S, redis_url, "prof", 1)(VERIFIER)
    draft = Draft.from_caption(Caption("drake", ("coffee", "tea"), "", 0), "coffee")

    async def measured() -> float:
        # one loop for every call, as a worker process has (its pooled client is per loop)
        for _ in range(warmup):
            await verify(handle, VERIFIER, draft)
        began = time.process_time()
        for _ in range(calls):
            await verify(handle, VERIFIER, draft)
        return (time.process_time() - began) * 1000 / calls

    return asyncio.run(measured())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.profile_stage_call", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--calls", type=int, default=300, help="measured calls (default 300)")
    parser.add_argument("--quick", action="store_true", help="5 warm-up and 30 measured calls")
    args = parser.parse_args(argv)
    warmup, calls = (5, 30) if args.quick else (30, args.calls)
    dspy_patches.apply()  # as the daemon's stage-running actors do at start-up
    with (
        tempfile.TemporaryDirectory(prefix="bench-stage-call-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        fake = Fake(Path(tmp))
        stack.callback(fake.stop)
        target, embedded = resolve("", str(Path(tmp) / "redis"))
        if embedded is not None:
            stack.callback(embedded.stop)
        ms = cpu_ms_per_call(fake.url, target.url, warmup, calls)
    print(f"{VERIFIER}: {calls} calls, CPU ms per call {ms:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
