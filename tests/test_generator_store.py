"""A generator worker saves its memes on Redis itself (no hop to the store pool): never once
its request's deadline has passed, and Redis being away is the request's ``store_error``,
not a crash. Its request handling only, on a real Redis; the whole daemon with a frozen
generator is tests/test_faults_hangs.py::test_no_meme_appears_after_its_request_timed_out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from actors import deadlines
from actors.base import RequestFailed
from memesys.config import load
from memesys.errors import ErrorCode
from memesys.pipeline.making import SaveMeme
from memesys.storage.availability import Availability
from memesys.storage.connection import EmbeddedRedis, connect
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore
from memesys.tree.generator import GeneratorArgs, GeneratorWorker, TreeWorkshop
from tests.support.records import PNG, meme

pytestmark = pytest.mark.store


def workshop(store: MemeStore) -> TreeWorkshop:
    cfg = load(env={})
    worker = GeneratorWorker.__new__(GeneratorWorker)  # no actor: only its Redis steps
    worker.args = GeneratorArgs(cfg.llm, cfg.pipeline, "", str(store.images.root), cache_ttl_s=60)
    worker.store = store
    return TreeWorkshop(worker)


async def save_under(deadline: float | None, shop: TreeWorkshop, order: SaveMeme) -> str:
    token = deadlines.serve(deadline)  # as the async actor does for the request it serves
    try:
        return await shop.save(order)
    finally:
        deadlines.reset(token)


def test_a_meme_is_saved_with_its_cache_entry_before_the_deadline(store: MemeStore) -> None:
    shop = workshop(store)
    saved = asyncio.run(
        save_under(time.time() + 5, shop, SaveMeme(meme("m1", time.time()), PNG, "k1"))
    )
    assert saved == "m1"
    assert store.get("m1")["topic"] == "topic m1" and store.image("m1").png == PNG
    assert asyncio.run(shop.cached("k1"))["id"] == "m1"


def test_a_meme_whose_deadline_passed_is_not_saved(store: MemeStore) -> None:
    """The save's thread may start late (the worker was frozen, or the CPU busy): past the
    deadline the client has had its 504, so nothing may appear."""
    shop = workshop(store)
    with pytest.raises(RequestFailed) as failed:
        asyncio.run(
            save_under(time.time() - 0.01, shop, SaveMeme(meme("m2", time.time()), PNG, "k2"))
        )
    assert failed.value.failure.code == ErrorCode.TIMEOUT
    assert store.get("m2") is None and store.image("m2") is None
    assert not any(store.images.root.rglob("*.png"))  # no file left behind either
    assert asyncio.run(shop.cached("k2")) is None


def test_redis_away_is_the_requests_store_error(tmp_path: Path) -> None:
    server = EmbeddedRedis(str(tmp_path / "redis"))
    url = server.start().url
    client = connect(url, timeout_s=0.5, retries=0)
    try:
        shop = workshop(
            MemeStore(
                client, ImageFiles(tmp_path / "images"), "memesys-test", Availability(client.ping)
            )
        )
        assert asyncio.run(shop.store_answers())
        server.stop()
        assert not asyncio.run(shop.store_answers())
        for step in (shop.save(SaveMeme(meme("m3", time.time()), PNG, None)), shop.cached("k3")):
            with pytest.raises(RequestFailed) as failed:
                asyncio.run(step)
            assert failed.value.failure.code == ErrorCode.STORE_ERROR
    finally:
        client.close()
        server.stop()
