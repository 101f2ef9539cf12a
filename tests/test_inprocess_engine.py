"""The in-process engine (the A/B baseline and rollback switch): the same meme flow as the
tree, run here against a real Redis and the real renderer, with the offline writer; and the
speculative render, which must never ship the picture of a caption that was replaced."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import deadlines
from memesys.cli.cache_reader import CacheReader
from memesys.config import Config, load_layers
from memesys.domain.formats import get_format
from memesys.domain.ids import new_id
from memesys.domain.messages import GenerateMeme, RenderMeme
from memesys.errors import ErrorCode
from memesys.inprocess.engine import InProcessEngine, LocalWorkshop
from memesys.pipeline.making import SaveMeme, Speculation, render_order
from memesys.pipeline.writing import Caption
from memesys.render.meme import RenderSettings, render_meme
from memesys.storage.errors import TooLate

TOPIC = "topic number 0 coffee"  # the offline writer's refinement replaces its caption


def config(**env: str) -> Config:
    base = {"MEMESYS_REDIS_KEY_PREFIX": f"inproc-{uuid.uuid4().hex[:8]}"}
    return load_layers(None, env={**base, **env}).build()


@pytest.fixture
def run() -> Iterator:
    """One event loop for the test, as the gateway has: the engine's asyncio Redis client
    belongs to the loop it first ran on."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def engine_for(redis: str, run, tmp_path: Path) -> Iterator:
    made: list[InProcessEngine] = []

    def build(**env: str) -> InProcessEngine:
        images = {"MEMESYS_STORAGE_IMAGE_DIR": str(tmp_path / "images")}
        made.append(InProcessEngine(config(**images, **env), redis))
        return made[-1]

    yield build
    for engine in made:
        run(engine.close())


@pytest.fixture
def reader_for(redis: str, run) -> Iterator:
    """The gateway's cache reader over an engine's store, as the daemon builds it."""
    made: list[CacheReader] = []

    def build(engine: InProcessEngine, url: str = redis) -> CacheReader:
        made.append(CacheReader(engine.store, engine.maker.key, url))
        return made[-1]

    yield build
    for reader in made:
        run(reader.close())


def picture(meme: dict, settings: RenderSettings) -> bytes:
    """What the renderer draws for the meme's own (final) caption."""
    fmt = get_format(meme["format"])
    texts = tuple(meme["texts"][slot.name] for slot in fmt.slots)
    return render_meme(
        RenderMeme(fmt.name, fmt.layout, texts, f"{fmt.name}:{meme['seed']}"), settings
    )


def test_a_meme_made_in_process_is_stored_and_cached_and_names_its_engine(
    engine_for, reader_for, run
) -> None:
    engine = engine_for()
    reader = reader_for(engine)
    order = GenerateMeme(TOPIC, seed=3, trace_id="t1")
    assert run(reader.look_up(order)) is None
    meme = run(engine.generate(order, 30))
    assert meme["engine"] == "inprocess" and meme["cached"] is False
    assert engine.store.image(meme["id"]).png == picture(meme, engine.render_settings)
    hit = run(reader.look_up(GenerateMeme(TOPIC.upper(), seed=3, trace_id="t2")))
    assert hit["id"] == meme["id"] and hit["cached"] is True and hit["trace_id"] == "t2"


def test_a_refined_caption_never_ships_the_speculative_picture(engine_for, run) -> None:
    unrefined = engine_for(MEMESYS_PIPELINE_MAX_REFINE_ROUNDS="0")
    first = run(unrefined.generate(GenerateMeme(TOPIC, seed=1, fresh=True), 30))
    refined_engine = engine_for(MEMESYS_PIPELINE_REFINE_THRESHOLD="1.0")
    meme = run(refined_engine.generate(GenerateMeme(TOPIC, seed=1, fresh=True), 30))
    # The premise: refinement replaced the first caption (else this test proves nothing).
    assert meme["format"] == first["format"] and meme["texts"] != first["texts"]
    assert list(meme["refinement"][0]["texts"]) == list(meme["texts"].values())
    shipped = refined_engine.store.image(meme["id"]).png
    settings = refined_engine.render_settings
    assert shipped == picture(meme, settings)
    assert shipped != picture(first, settings)  # the speculative picture of the first caption


def test_the_speculative_picture_is_used_for_the_caption_it_drew_and_only_for_it() -> None:
    """And its files, staged while the caption is judged, are the save's when the picture is
    used; otherwise (another caption kept, or the meme failed) they are unstaged, also when
    the staging was still running when they were dropped."""
    drawn: list[RenderMeme] = []
    staged: list[bytes] = []
    unstaged: list[str] = []

    async def render(order: RenderMeme) -> bytes:
        drawn.append(order)
        return render_meme(order, RenderSettings())

    async def stage(png: bytes) -> str:
        await asyncio.sleep(0.02)  # a thread's fsyncs
        staged.append(png)
        return f"staged {len(staged)}"

    async def unstage(name: str) -> None:
        unstaged.append(name)

    first = Caption("drake", ("coffee", "tea"), "", 0)
    refined = Caption("drake", ("coffee!", "tea"), "", 0)
    first_png = render_meme(render_order(first, 7), RenderSettings())

    async def scenario(final: Caption | None) -> tuple[bytes, str] | None:
        speculation = Speculation(render, 7, 0.0, stage, unstage)
        speculation.start(first)
        await asyncio.sleep(0)
        got = None if final is None else await speculation.picture_for(final)
        speculation.discard()
        await asyncio.sleep(0.05)  # an interrupted staging ends, then is undone
        return got

    assert asyncio.run(scenario(first)) == (first_png, "staged 1")
    assert drawn == [render_order(first, 7)]  # drawn once: the speculative picture was used
    assert staged == [first_png] and unstaged == []  # the save's now
    drawn.clear(), staged.clear()
    refined_png = render_meme(render_order(refined, 7), RenderSettings())
    assert asyncio.run(scenario(refined)) == (refined_png, "")  # not staged: the save writes it
    assert drawn[-1] == render_order(refined, 7)
    assert staged == [first_png] and unstaged == ["staged 1"]
    drawn.clear(), staged.clear(), unstaged.clear()
    assert asyncio.run(scenario(None)) is None  # the meme failed while its picture was staged
    assert staged == [first_png] and unstaged == ["staged 1"]


def test_the_speculative_picture_waits_its_delay_unless_it_is_wanted_sooner() -> None:
    """pipeline.render_delay_s: the picture starts after the delay, or at once when judging
    ends sooner; a caption replaced before the delay ends is never drawn."""
    drawn: list[tuple[RenderMeme, float]] = []
    first = Caption("drake", ("coffee", "tea"), "", 0)
    refined = Caption("drake", ("coffee!", "tea"), "", 0)

    async def scenario(judged_after_s: float, final: Caption) -> int:
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def render(order: RenderMeme) -> bytes:
            drawn.append((order, loop.time() - began))
            return b"png"

        speculation = Speculation(render, seed=7, delay_s=0.2)
        speculation.start(first)
        await asyncio.sleep(judged_after_s)
        drawn_while_judged = len(drawn)
        await speculation.picture_for(final)
        speculation.discard()
        return drawn_while_judged

    assert asyncio.run(scenario(0.3, first)) == 1  # drawn during judging, after the delay
    assert 0.2 <= drawn[0][1] < 0.3
    drawn.clear()
    assert asyncio.run(scenario(0.05, first)) == 0  # judged sooner: drawn when wanted
    assert [order for order, _ in drawn] == [render_order(first, 7)] and drawn[0][1] < 0.15
    drawn.clear()
    assert asyncio.run(scenario(0.05, refined)) == 0
    assert [order for order, _ in drawn] == [render_order(refined, 7)]  # first never drawn


def test_a_fresh_meme_fails_fast_with_store_error_while_redis_is_away(reader_for, run) -> None:
    engine = InProcessEngine(config(), "redis://127.0.0.1:1/0")
    reader = reader_for(engine, "redis://127.0.0.1:1/0")
    try:
        for attempt in (
            engine.generate(GenerateMeme("x", fresh=True), 10),
            reader.look_up(GenerateMeme("x", fresh=True)),
            reader.look_up(GenerateMeme("x")),
        ):
            with pytest.raises(Exception) as failed:
                run(attempt)
            assert failed.value.code is ErrorCode.STORE_ERROR
    finally:
        run(engine.close())


def test_a_looked_up_order_skips_the_makers_own_look_up(engine_for, run) -> None:
    engine = engine_for()
    made = run(engine.generate(GenerateMeme("looked up coffee", seed=4), 30))
    again = run(engine.generate(GenerateMeme("looked up coffee", seed=4), 30))
    assert again["id"] == made["id"] and again["cached"]  # the maker looks the cache up
    told = GenerateMeme("looked up coffee", seed=4, looked_up=True)
    assert run(engine.generate(told, 30))["id"] != made["id"]  # the asker did


def test_a_meme_past_its_deadline_is_a_timeout(engine_for, run) -> None:
    engine = engine_for()
    with pytest.raises(Exception) as failed:
        run(engine.generate(GenerateMeme("slow coffee", fresh=True), 0.001))
    assert failed.value.code is ErrorCode.TIMEOUT


def test_a_save_that_starts_past_the_deadline_saves_nothing(engine_for, run) -> None:
    """As in the tree (tests/test_generator_store.py): the Redis thread may start late, and
    past the deadline the client has had its 504, so the meme must not appear."""
    engine = engine_for()
    made = run(engine.generate(GenerateMeme(TOPIC, seed=4, fresh=True), 30))
    png = engine.store.image(made["id"]).png

    async def save(meme_id: str, deadline: float) -> str:
        with deadlines.serving(deadline):
            return await LocalWorkshop(engine).save(SaveMeme({**made, "id": meme_id}, png))

    late, in_time = new_id(), new_id()
    with pytest.raises(TooLate) as failed:
        run(save(late, time.time() - 0.01))
    assert failed.value.code is ErrorCode.TIMEOUT and engine.store.get(late) is None
    assert run(save(in_time, time.time() + 5)) == in_time
    assert engine.store.get(in_time)["topic"] == made["topic"]


def test_a_hit_is_one_script_call_and_anything_odd_goes_to_the_store(
    engine_for, reader_for, run
) -> None:
    """The gateway's one-round-trip read answers clean hits and misses; a corrupt entry or
    record is left to MemeStore, which quarantines it (a miss: the meme is made again)."""
    from memesys.storage.hits import UNSURE

    engine = engine_for()
    reader = reader_for(engine)
    order = GenerateMeme("hit coffee", seed=5)
    meme = run(engine.generate(order, 30))
    key = engine.maker.key(order)
    assert run(reader.hits.cached(key))["id"] == meme["id"]
    assert run(reader.hits.cached(engine.maker.key(GenerateMeme("never made")))) is None
    entry, prefix = engine.store.hit_keys(key)
    engine.store.client.set(prefix + meme["id"], b"{not json")
    assert run(reader.hits.cached(key)) is UNSURE
    assert run(reader.look_up(order)) is None  # quarantined by the store, then a miss
    assert engine.store.quarantined().get("meme") == 1
    engine.store.client.set(entry, b"\xff not an id")
    assert run(reader.hits.cached(key)) is UNSURE
    assert run(reader.look_up(order)) is None
    assert engine.store.quarantined().get("cache") == 1
