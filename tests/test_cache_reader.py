"""The gateway's cache reader on its own: the daemon builds the in-process engine only when a
meme is made in process, and the reader keys orders as every maker does."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from memesys.cli.cache_reader import CacheReader
from memesys.config import Config, load_layers
from memesys.config.capacity import uses_inprocess
from memesys.domain.messages import GenerateMeme
from memesys.inprocess.engine import InProcessEngine


def config(**env: str) -> Config:
    base = {"MEMESYS_REDIS_KEY_PREFIX": f"reader-{uuid.uuid4().hex[:8]}"}
    return load_layers(None, env={**base, **env}).build()


def test_the_in_process_engine_is_built_only_when_it_makes_memes() -> None:
    assert not uses_inprocess(config())
    assert uses_inprocess(config(MEMESYS_SYSTEM_ENGINE="inprocess"))
    assert uses_inprocess(config(MEMESYS_SYSTEM_AB_SPLIT="0.5"))


def test_a_reader_of_its_own_finds_what_a_maker_cached(redis: str, tmp_path: Path) -> None:
    cfg = config(MEMESYS_STORAGE_IMAGE_DIR=str(tmp_path / "images"))
    order = GenerateMeme("reader coffee", seed=2, trace_id="t1")

    async def scenario() -> None:
        engine, reader = InProcessEngine(cfg, redis), CacheReader.of(cfg, redis)
        try:
            assert reader.key(order) == engine.maker.key(order)
            assert await reader.look_up(order) is None
            meme = await engine.generate(order, 30)
            hit = await reader.look_up(GenerateMeme("Reader  coffee", seed=2, trace_id="t2"))
            assert hit is not None and hit["id"] == meme["id"]
            assert hit["cached"] is True and hit["trace_id"] == "t2"
            assert await reader.look_up(GenerateMeme("reader coffee", fresh=True)) is None
        finally:
            await reader.close()
            await engine.close()

    asyncio.run(scenario())
