"""The generator workers: one meme from topic to stored PNG, many memes in flight per process.

Each worker is an async actor. A meme's stages run as one coroutine: the cache lookup and the
save go to the store pool, the caption to the DSPy program (in a thread: DSPy and the offline
writer are synchronous), the PNG to the render pool. Nothing blocks the worker's mailbox.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from actors.async_actor import AsyncActor
from actors.base import RequestFailed
from actors.bridge import RemoteFailure
from memesys.formats import UnknownFormat, get_format
from memesys.lm import build_lm
from memesys.meme import build_meme, cache_key, new_meme_id
from memesys.messages import CachedMeme, Echo, GenerateMeme, RenderMeme, SaveMeme
from memesys.program import CaptionError, write_caption

STORE = "store"
RENDER = "render"


@dataclass(frozen=True)
class GeneratorArgs:
    llm_model: str
    api_key: str
    base_url: str
    llm_timeout_s: float
    max_in_flight: int = 64
    stage_timeout_s: float = 10.0


class GeneratorWorker(AsyncActor):
    def on_start(self, args: GeneratorArgs) -> None:
        self.args = args
        self.max_in_flight = args.max_in_flight
        self.lm = build_lm(args.llm_model, args.api_key, args.base_url, args.llm_timeout_s)

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, Echo):
            return payload.value
        if isinstance(payload, GenerateMeme):
            return self.generate(payload)
        return super().handle(payload)

    async def _stage(self, path: str, payload: Any) -> Any:
        try:
            return await self.ask(path, payload, self.args.stage_timeout_s)
        except RemoteFailure as exc:
            raise RequestFailed(exc.failure.code, f"{path}: {exc.failure.message}") from exc

    async def generate(self, request: GenerateMeme) -> dict:
        timings: dict[str, float] = {}
        began = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        key = cache_key(request, self.lm)
        if not request.fresh:
            cached = await self._stage(STORE, CachedMeme(key))
            lap("cache")
            if cached is not None:
                return {**cached, "cached": True, "trace_id": request.trace_id}
        try:
            caption = await asyncio.to_thread(
                write_caption, self.lm, request.topic, request.format, request.style,
                request.audience, request.seed)
        except UnknownFormat as exc:
            raise RequestFailed("unknown_format", str(exc)) from exc
        except CaptionError as exc:
            raise RequestFailed("caption_error", str(exc)) from exc
        lap("caption")
        fmt = get_format(caption.format)
        meme_id = new_meme_id()
        png = await self._stage(RENDER, RenderMeme(fmt.name, fmt.layout, caption.texts,
                                                   f"{fmt.name}:{request.seed}"))
        lap("render")
        meme = build_meme(meme_id, request, fmt, caption, self.lm, timings)
        await self._stage(STORE, SaveMeme(meme, png, None if request.fresh else key))
        lap("store")
        timings["total"] = (time.perf_counter() - began) * 1000
        return {**meme, "timings": {stage: round(ms, 2) for stage, ms in timings.items()}}
