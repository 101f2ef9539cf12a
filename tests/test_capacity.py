"""Internal capacities come from one figure, so the tree never refuses what the gateway admits."""

from __future__ import annotations

import pytest

from memesys.config import ConfigError, load
from memesys.config.capacity import JUDGING_CALLS_PER_MEME, Capacities
from memesys.pipeline.verification import VERIFIERS
from memesys.tree.paths import GENERATOR, RENDER, STORE, VERIFY
from memesys.tree.spec import root_spec


def test_judging_calls_per_meme_are_the_verifiers_and_the_scorer() -> None:
    assert JUDGING_CALLS_PER_MEME == len(VERIFIERS) + 1


def test_every_capacity_follows_the_memes_in_flight() -> None:
    cfg = load(
        env={
            "MEMESYS_WORKERS_GENERATORS": "3",
            "MEMESYS_TASKS_MAX_IN_FLIGHT": "5",
            "MEMESYS_WORKERS_MAX_IN_FLIGHT_PER_WORKER": "10",
        }
    )
    cap = Capacities.of(cfg)
    assert (cap.memes, cap.generation_slots) == (30, 25)
    assert cap.verify_per_worker == 30 and cap.verify_per_sender == 10
    pools = {
        c.name: c.args
        for c in root_spec(cfg, "redis://127.0.0.1:1/0").args.children
        if c.name in (STORE, RENDER, VERIFY, GENERATOR)
    }
    assert pools[GENERATOR].max_outstanding == 10
    assert pools[GENERATOR].worker_args.max_in_flight == 10
    assert pools[VERIFY].max_outstanding == 10 and pools[VERIFY].worker_args.max_in_flight == 30
    assert pools[RENDER].max_outstanding >= 10
    assert pools[STORE].max_outstanding == cfg.gateway.max_in_flight  # the gateway's reads


def test_async_tasks_must_leave_room_for_synchronous_memes() -> None:
    with pytest.raises(ConfigError, match=r"tasks\.max_in_flight must be below"):
        load(
            env={
                "MEMESYS_WORKERS_GENERATORS": "1",
                "MEMESYS_TASKS_MAX_IN_FLIGHT": "8",
                "MEMESYS_WORKERS_MAX_IN_FLIGHT_PER_WORKER": "8",
            }
        )
