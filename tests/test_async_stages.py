"""LM stages hold no thread while their call is in flight: they are awaited on the caller's
event loop (DSPy's async path), so many judging calls at once need no more threads than the
few short hops DSPy's async path still makes (to price each answer). With the stages run in
threads, as before, each call in flight held one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dspy
from dspy.lm15 import Request, Response

from memesys.inprocess.engine import LocalParallelStages
from memesys.offline.lm import OfflineLM, complete
from memesys.pipeline.draft import Draft
from memesys.pipeline.flow import Costed
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.placements import judge_at_once
from memesys.pipeline.verification import VERIFIERS
from memesys.tree.verifier import run_stage

DRAFTS = 5  # 5 drafts x 4 judging calls: 20 calls in flight at once
CALLS = DRAFTS * (len(VERIFIERS) + 1)
LATENCY_S = 0.3
POOL = 2  # the loop's threads for what still blocks (DSPy's hop to price each answer)

C = TypeVar("C", bound=Costed)


class Slow:
    """The offline writer's answer after ``LATENCY_S``, awaited (a provider's latency):
    counts the calls in flight and the threads of the process while they are."""

    def __init__(self) -> None:
        self.in_flight = self.peak = self.peak_threads = 0

    async def complete(self, request: Request) -> Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.peak_threads = max(self.peak_threads, threading.active_count())
        try:
            await asyncio.sleep(LATENCY_S)
            return complete(request)
        finally:
            self.in_flight -= 1


def slow_handle() -> tuple[LMHandle, Slow]:
    engine = Slow()
    lm = dspy.LM("offline/slow", engine=OfflineLM(), async_engine=engine, cache=False)
    return LMHandle(lm, "offline", "slow"), engine


def drafts() -> list[Draft]:
    return [Draft(f"topic {i}", "drake", ("Tea", "Coffee")) for i in range(DRAFTS)]


def measured(judge_all: Callable[[], Awaitable[Any]], engine: Slow) -> int:
    """The threads ``judge_all`` added to the process at its peak, on a loop whose pool for
    blocking work has ``POOL`` threads; every call must have been in flight at once."""

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
        before = threading.active_count()
        await judge_all()
        return engine.peak_threads - before

    added = asyncio.run(main())
    assert engine.peak == CALLS, f"{engine.peak} of {CALLS} calls were in flight at once"
    return added


def test_the_in_process_judging_group_holds_no_thread_per_call() -> None:
    handle, engine = slow_handle()

    async def judge_all() -> None:
        groups = [LocalParallelStages(lambda stage: handle, None) for _ in range(DRAFTS)]
        await asyncio.gather(*(g.judge_all(d, "") for g, d in zip(groups, drafts())))

    assert measured(judge_all, engine) <= POOL


def test_a_verifier_workers_judging_holds_no_thread_per_call() -> None:
    handle, engine = slow_handle()

    async def place(name: str, call: Callable[[LMHandle], Awaitable[C]]) -> C:
        result, _ = await run_stage(handle, call, name)  # as VerifierWorker places a stage
        return result

    async def judge_all() -> None:
        await asyncio.gather(*(judge_at_once(d, None, place) for d in drafts()))

    assert measured(judge_all, engine) <= POOL
