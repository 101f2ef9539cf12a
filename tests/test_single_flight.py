"""SingleFlight: identical requests in flight share one piece of work."""

from __future__ import annotations

import asyncio

import pytest

from memesys.http.single_flight import SingleFlight


async def test_concurrent_callers_of_one_key_share_one_run() -> None:
    flights: SingleFlight[str] = SingleFlight()
    runs = 0

    async def work() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)  # the work takes a while
        return "meme"

    answers = await asyncio.gather(*(flights.run("k", work) for _ in range(50)))
    assert runs == 1 and [r for r, _ in answers] == ["meme"] * 50
    assert sum(shared for _, shared in answers) == 49 and flights.in_flight == 0
    await flights.run("k", work)  # landed: the next caller starts anew
    assert runs == 2


async def test_other_keys_run_on_their_own_and_failures_are_shared() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def fail() -> str:
        await asyncio.sleep(0.02)  # the work takes a while
        raise RuntimeError("provider down")

    async def ok() -> str:
        return "fine"

    results = await asyncio.gather(
        flights.run("a", fail), flights.run("a", fail), flights.run("b", ok), return_exceptions=True
    )
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]
    assert results[2] == ("fine", False)


async def test_a_follower_leaving_does_not_cancel_the_work_but_the_last_one_does() -> None:
    flights: SingleFlight[str] = SingleFlight()
    started = asyncio.Event()
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> str:
        started.set()
        try:
            await asyncio.sleep(0.2)  # the work takes a while
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finished.set()
        return "done"

    leader = asyncio.ensure_future(flights.run("k", slow))
    follower = asyncio.ensure_future(flights.run("k", slow))
    await started.wait()  # the work runs, so both have joined the flight (they ran first)
    follower.cancel()  # its client hung up
    assert await leader == ("done", False) and finished.is_set()
    with pytest.raises(asyncio.CancelledError):
        await follower

    started.clear()
    alone = asyncio.ensure_future(flights.run("k2", slow))
    await started.wait()
    alone.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)  # nobody waits any more: the work stops
