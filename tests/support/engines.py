"""A test's custom DSPy engine as an LM the stages can run on: they await every LM call (DSPy's
async path), so the LM needs an async engine too; this one answers what the test's engine
answers."""

from __future__ import annotations

from typing import Protocol

import dspy
from dspy.lm15 import Request, Response


class Engine(Protocol):
    def complete(self, request: Request) -> Response: ...


class Awaited:
    """``engine``'s answers, awaited."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def complete(self, request: Request) -> Response:
        return self.engine.complete(request)


def engine_lm(model: str, engine: Engine) -> dspy.LM:
    """An uncached LM on ``engine``, sync and async, that never retries."""
    return dspy.LM(
        model=model, engine=engine, async_engine=Awaited(engine), cache=False, num_retries=0
    )
