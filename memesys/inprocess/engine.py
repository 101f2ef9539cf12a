"""The in-process engine: the same meme flow (:class:`~memesys.pipeline.making.MemeMaker`),
program, stages, cache, store and contract as the actor tree, run with asyncio in the
gateway's own process, no actors.

It is the baseline the tree is measured against (``python -m bench.ab``) and the rollback
switch an operator expects (``[system] engine = "inprocess"``, or a share of the traffic with
``ab_split``). Its placement mirrors the tree's ``parallel`` mode: select_write (or select and
write) and refine one after another, the three verifiers and the scorer at once, the render
while the first caption is judged. Every LM stage is awaited on the gateway's event loop
(DSPy's async path: a call in flight holds no thread). Pillow is synchronous, so the renders
run in this engine's own thread pool (two per meme the gateway admits at once: the speculative
picture and the final one), never in the event loop. Redis is the store's synchronous client,
in a small pool of its own (``STORE_THREADS``): redis-py refuses a call past its 100
connections rather than waiting, and a Redis call is too short to need more.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from dspy.utils.exceptions import LMError

from actors import deadlines
from memesys.config import Config
from memesys.config.capacity import Capacities
from memesys.domain.engines import INPROCESS
from memesys.domain.messages import GenerateMeme, RenderMeme
from memesys.errors import ErrorCode
from memesys.pipeline import dspy_patches
from memesys.pipeline.draft import Draft
from memesys.pipeline.errors import MemeFailed, first_line
from memesys.pipeline.flow import Costed
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.making import MemeMaker, SaveMeme
from memesys.pipeline.placements import ParallelStages, judge_at_once
from memesys.pipeline.predict import OutputError
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import Verdict
from memesys.render.meme import RenderSettings, render_meme
from memesys.storage.journal import MemeJournal
from memesys.storage.memes import MemeStore

T = TypeVar("T")
C = TypeVar("C", bound=Costed)

STORE_THREADS = 16


@dataclass
class LocalParallelStages(ParallelStages):
    """Pipeline stages in this process: the judging group all at once, one task per call on
    this loop."""

    async def judge_all(
        self, draft: Draft, suffix: str
    ) -> tuple[dict[str, Verdict], Scores | BaseException]:
        async def place(name: str, call: Callable[[LMHandle], Awaitable[C]]) -> C:
            return await self.call(name + suffix, name, call)

        answers = await judge_at_once(draft, self.program, place)
        verdicts = {}
        for verifier, answer in answers.verdicts.items():
            if isinstance(answer, (LMError, OutputError)):
                answer = Verdict.unavailable(verifier, first_line(answer))
            elif isinstance(answer, BaseException):
                raise answer  # a bug, not an unavailable verifier
            verdicts[verifier] = answer
        return verdicts, answers.score


class InProcessEngine:
    """Makes memes in this process; :meth:`close` when the gateway stops."""

    name = INPROCESS

    def __init__(self, cfg: Config, redis_url: str) -> None:
        capacity = Capacities.of(cfg)
        self.pool = ThreadPoolExecutor(
            capacity.inprocess_render_threads, thread_name_prefix="memesys-inprocess-render"
        )
        self.store_pool = ThreadPoolExecutor(
            STORE_THREADS, thread_name_prefix="memesys-inprocess-redis"
        )
        dspy_patches.apply()
        self.maker = MemeMaker.configured(
            INPROCESS,
            cfg.llm,
            cfg.pipeline,
            redis_url,
            cfg.redis.key_prefix,
            capacity.llm_processes,
        )
        redis = cfg.redis
        self.store = MemeStore.open(
            redis_url,
            "in-process engine",
            redis.key_prefix,
            cfg.image_dir,
            redis.quarantine_ttl_s,
            redis.retry_backoff_initial_s,
            redis.retry_backoff_max_s,
            cfg.embedded_redis_dir,
        )
        self.cache_ttl_s = redis.cache_ttl_s
        self.render_settings = RenderSettings.from_config(cfg.render)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a render) in the engine's pool, with this task's context (the
        deadline)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(context.run, fn, *args)
        )

    async def on_store(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a call on the store) in the engine's Redis pool."""
        return await asyncio.get_running_loop().run_in_executor(
            self.store_pool, functools.partial(fn, *args)
        )

    async def generate(self, order: GenerateMeme, timeout_s: float) -> dict[str, Any]:
        """One meme within ``timeout_s``; raises MemeFailed (or a store or render error,
        each with its contract code)."""
        try:
            async with asyncio.timeout(timeout_s):
                with deadlines.serving(time.time() + timeout_s):
                    return await self.maker.make(order, LocalWorkshop(self))
        except TimeoutError as exc:
            raise MemeFailed(
                ErrorCode.TIMEOUT, f"the meme was not made within {timeout_s:.1f} s"
            ) from exc

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.store_pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()


@dataclass
class LocalWorkshop:
    """A meme's steps placed in this process (:class:`~memesys.pipeline.making.Workshop`)."""

    engine: InProcessEngine

    async def cached(self, key: str) -> dict[str, Any] | None:
        return await self.engine.on_store(self.engine.store.cached, key)

    async def store_answers(self) -> bool:
        return await self.engine.on_store(self.engine.store.answers)

    async def render(self, order: RenderMeme) -> bytes:
        return await self.engine.run(render_meme, order, self.engine.render_settings)

    async def stage_image(self, meme_id: str, png: bytes) -> str:
        return await self.engine.on_store(self.engine.store.stage_image, meme_id, png)

    async def unstage(self, staged: str) -> None:
        await self.engine.on_store(self.engine.store.unstage, staged)

    async def save(self, order: SaveMeme) -> str:
        return await self.engine.on_store(
            self.engine.store.keep,
            order.meme,
            order.png,
            order.cache_key,
            self.engine.cache_ttl_s,
            deadlines.current(),
            order.version,
            order.correlation,
            order.events,
            order.staged,
        )

    def journal(self, meme_id: str, request: GenerateMeme) -> MemeJournal:
        trace = request.trace_id
        return self.engine.store.journal(
            meme_id, request.correlation or trace, trace, self.engine.on_store
        )

    def stages(self, maker: MemeMaker) -> LocalParallelStages:
        return LocalParallelStages(maker.handle_for, maker.program.program)
