"""Scoring: the model's ratings, the weighted overall, and the verdict policy on the score."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM

from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle, offline_lm
from memesys.pipeline.predict import OutputError
from memesys.pipeline.scoring import WEIGHTS, Scores, apply_verdicts, score, weighted
from memesys.pipeline.verification import FAILED, PASSED, UNAVAILABLE, Verdict
from memesys.pipeline.writing import write_caption

STRICT = dspy.ChatAdapter(use_json_adapter_fallback=False)
BASE = Scores(
    humor=0.8,
    clarity=0.6,
    creativity=0.5,
    shareability=0.7,
    overall=0.8,
    critique="fine",
    tokens=10,
)


def dummy(*answers: dict[str, Any]) -> LMHandle:
    return LMHandle(lm=DummyLM(list(answers)), provider="dummy", model="dummy")


def verdict(verifier: str, status: str, confidence: float = 0.9) -> Verdict:
    return Verdict(verifier, status, confidence, (), 0)


@pytest.fixture(scope="module")
def offline() -> LMHandle:
    return offline_lm()


def test_default_weights() -> None:
    assert dict(WEIGHTS) == {"humor": 0.35, "clarity": 0.25, "creativity": 0.2, "shareability": 0.2}
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_model_ratings_give_the_weighted_overall() -> None:
    handle = dummy(
        {
            "critique": "Cut  the\nsecond panel.",
            "humor": 0.8,
            "clarity": 0.6,
            "creativity": 0.5,
            "shareability": 0.7,
        }
    )
    with dspy.context(adapter=STRICT):
        scores = asyncio.run(score(handle, Draft("tea", "drake", ("Tea", "Coffee"))))
    assert scores == Scores(
        0.8,
        0.6,
        0.5,
        0.7,
        pytest.approx(0.35 * 0.8 + 0.25 * 0.6 + 0.2 * 0.5 + 0.2 * 0.7),
        "Cut the second panel.",
        0,
    )


def test_ratings_are_clamped() -> None:
    handle = dummy(
        {"critique": "", "humor": 1.5, "clarity": -2, "creativity": 1, "shareability": 0}
    )
    scores = asyncio.run(score(handle, Draft("tea", "drake", ("Tea", "Coffee"))))
    assert (scores.humor, scores.clarity, scores.creativity) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "answer",
    [
        {"critique": "ok", "humor": "nan", "clarity": 1, "creativity": 1, "shareability": 1},
        {"critique": "ok", "humor": "hilarious"},
    ],
)
def test_unusable_ratings_raise(answer: dict[str, Any]) -> None:
    with dspy.context(adapter=STRICT), pytest.raises(OutputError):
        asyncio.run(score(dummy(answer), Draft("tea", "drake", ("Tea", "Coffee"))))


def test_weighted_accepts_other_weights() -> None:
    values = {"humor": 1.0, "clarity": 0.0, "creativity": 0.0, "shareability": 0.0}
    assert weighted(values, {"humor": 1, "clarity": 1, "creativity": 1, "shareability": 1}) == 0.25


@pytest.mark.parametrize(
    "verdicts, overall",
    [
        ({}, 0.8),
        ({"appropriateness": verdict("appropriateness", PASSED)}, 0.8),
        ({"appropriateness": verdict("appropriateness", FAILED)}, 0.0),
        ({"factuality": verdict("factuality", FAILED, 0.8)}, 0.8 * (1 - 0.8 * 0.5)),
        ({"factuality": verdict("factuality", FAILED, 0.0)}, 0.8),
        ({"instruction_following": verdict("instruction_following", FAILED)}, 0.4),
        (
            {
                "factuality": verdict("factuality", FAILED, 1.0),
                "instruction_following": verdict("instruction_following", FAILED),
            },
            0.2,
        ),
        (
            {
                name: verdict(name, UNAVAILABLE, 0.0)
                for name in ("appropriateness", "factuality", "instruction_following")
            },
            0.8,
        ),
    ],
)
def test_apply_verdicts(verdicts: dict[str, Verdict], overall: float) -> None:
    adjusted = apply_verdicts(BASE, verdicts)
    assert adjusted.overall == pytest.approx(overall)
    assert adjusted == replace(BASE, overall=adjusted.overall)  # only overall changes


def test_offline_scores_are_deterministic_and_in_range(offline: LMHandle) -> None:
    for topic in ("coffee", "production outage", "monday meetings"):
        draft = Draft.from_caption(asyncio.run(write_caption(offline, topic)), topic)
        scores = asyncio.run(score(offline, draft))
        assert scores == asyncio.run(score(offline_lm(), draft))
        values = (scores.humor, scores.clarity, scores.creativity, scores.shareability)
        assert all(0 <= v <= 1 for v in values) and 0 < scores.overall <= 1
        assert scores.critique and scores.tokens > 0


def test_offline_scores_follow_their_features(offline: LMHandle) -> None:
    good = asyncio.run(
        score(offline, Draft("coffee", "drake", ("Decaf coffee", "Espresso, but at 2am!")))
    )
    crammed = asyncio.run(
        score(offline, Draft("coffee", "drake", ("Decaf coffee", "x " * 34 + "y")))
    )
    off_topic = asyncio.run(
        score(offline, Draft("coffee", "drake", ("Decaf tea", "Espresso, but at 2am!")))
    )
    flat = asyncio.run(
        score(offline, Draft("coffee", "drake", ("Decaf coffee", "Espresso at 2am")))
    )
    assert crammed.clarity < good.clarity and "shorten 'prefer' (69/70 chars)" in crammed.critique
    assert off_topic.shareability < good.shareability and "mention the topic" in off_topic.critique
    assert flat.humor < good.humor and "twist" in flat.critique and "punchline" in flat.critique
    assert good.critique == "Tight and on topic; keep it."


def test_offline_creativity_varies_with_the_seed(offline: LMHandle) -> None:
    creativity = set()
    for seed in range(6):
        caption = asyncio.run(write_caption(offline, "monday meetings", format="drake", seed=seed))
        creativity.add(
            asyncio.run(
                score(offline, Draft.from_caption(caption, "monday meetings", seed=seed))
            ).creativity
        )
    assert len(creativity) >= 3
