"""The three verifiers: offline heuristics, fail-closed parsing, measured limits, LM failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dspy
import pytest
from dspy.lm15 import Message, Request, Response, TimeoutError, Usage
from dspy.utils import DummyLM
from dspy.utils.exceptions import LMTimeoutError

from memesys.domain.formats import UnknownFormat
from memesys.offline.templates import TEMPLATES
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle, offline_lm
from memesys.pipeline.verification import (
    FAILED,
    PASSED,
    UNAVAILABLE,
    VERIFIERS,
    Verdict,
    verify,
)
from memesys.pipeline.writing import write_caption
from tests.support.engines import engine_lm

TOPICS = ("monday meetings", "rust borrow checker", "coffee", "production outage", "cats vs dogs")
STRICT = dspy.ChatAdapter(use_json_adapter_fallback=False)


def dummy(*answers: dict[str, Any]) -> LMHandle:
    return LMHandle(lm=DummyLM(list(answers)), provider="dummy", model="dummy")


class Engine:
    """A custom engine whose every answer comes from ``reply`` (text, or an exception)."""

    def __init__(self, reply: Callable[[], str]) -> None:
        self.reply, self.calls = reply, 0

    def complete(self, request: Request) -> Response:
        self.calls += 1
        return Response(
            id=None,
            model="canned",
            message=Message.assistant(self.reply()),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )


def canned(reply: Callable[[], str]) -> tuple[LMHandle, Engine]:
    engine = Engine(reply)
    lm = engine_lm("canned/canned", engine)
    return LMHandle(lm=lm, provider="canned", model="canned"), engine


@pytest.fixture(scope="module")
def offline() -> LMHandle:
    return offline_lm()


def drake(*texts: str, topic: str = "hot drinks", style: str = "", audience: str = "") -> Draft:
    return Draft(topic, "drake", texts, style, audience)


@pytest.mark.parametrize("topic", TOPICS)
def test_offline_captions_pass(offline: LMHandle, topic: str) -> None:
    for seed in range(3):
        draft = Draft.from_caption(
            asyncio.run(write_caption(offline, topic, seed=seed)), topic, seed=seed
        )
        verdicts = [asyncio.run(verify(offline, name, draft)) for name in VERIFIERS]
        assert [v.status for v in verdicts] == [PASSED] * 3, verdicts
        assert all(0 <= v.confidence <= 1 and v.tokens > 0 for v in verdicts)


@pytest.mark.parametrize(
    "topic, category",
    [
        ("email me at jane.doe@example.com", "private data: an email address"),
        ("call 555-867-5309 after midnight", "private data: a phone or ID number"),
        ("my SSN is 123-45-6789", "private data: an SSN-like ID number"),
        ("the party at 742 Evergreen Terrace", "private data: a street address"),
        ("how to stab my neighbour", "violence"),
        ("bomb the office", "violence"),
        ("kill yourself, loser", "harassment"),
        ("nudes of my coworker", "sexual content"),
        ("immigrants are vermin", "hate"),
    ],
)
def test_appropriateness_refuses_crafted_topics(
    offline: LMHandle, topic: str, category: str
) -> None:
    verdict = asyncio.run(verify(offline, "appropriateness", drake("Tea", "Coffee", topic=topic)))
    assert verdict.status == FAILED and verdict.confidence > 0.5
    assert any(r.startswith(category) and "the topic" in r for r in verdict.reasons), verdict


def test_appropriateness_reads_the_texts(offline: LMHandle) -> None:
    verdict = asyncio.run(verify(offline, "appropriateness", drake("Tea", "Mail bob@example.org")))
    assert verdict.status == FAILED
    assert verdict.reasons == ("private data: an email address in slot 'prefer'",)


def test_no_template_trips_the_offline_verifiers(offline: LMHandle) -> None:
    """Every template, filled in, passes appropriateness and factuality: the word lists do not
    fire on the writer's own jokes (numbers like "25", "2am", "2.0" included)."""
    words = {
        "topic": "coffee",
        "Topic": "Coffee",
        "who": "developers",
        "Who": "Developers",
        "style": "sarcastic",
        "Style": "Sarcastic",
        "mock": "cOfFeE",
    }
    for name, templates in TEMPLATES.items():
        for template in templates:
            draft = Draft("coffee", name, tuple(p.format_map(words) for p in template))
            for verifier in ("appropriateness", "factuality"):
                verdict = asyncio.run(verify(offline, verifier, draft))
                assert verdict.status == PASSED, (name, template, verdict)


def test_factuality_flags_claims_about_real_people(offline: LMHandle) -> None:
    draft = drake(
        "Self-driving cars",
        "Still driving myself",
        topic="Elon Musk said in 2019 that 90% of cars would drive themselves",
    )
    verdict = asyncio.run(verify(offline, "factuality", draft))
    assert verdict.status == FAILED and verdict.confidence > 0.5
    flagged = " | ".join(verdict.reasons)
    for claim in ("'Elon Musk said'", "'2019'", "'90%'"):
        assert claim in flagged, flagged


def test_factuality_passes_plain_jokes(offline: LMHandle) -> None:
    verdict = asyncio.run(
        verify(offline, "factuality", drake("Decaf", "Espresso at 2am", topic="coffee"))
    )
    assert (verdict.status, verdict.reasons) == (PASSED, ())
    assert verdict.confidence == 1.0


def test_instruction_following_measures_lengths_whatever_the_model_says() -> None:
    handle = dummy({"violations": [], "verdict": "passed", "confidence": 0.99})
    verdict = asyncio.run(verify(handle, "instruction_following", drake("Tea", "x" * 71)))
    assert (verdict.status, verdict.confidence) == (FAILED, 1.0)
    assert verdict.reasons == ("slot 'prefer' has 71 chars, max 70",)


def test_instruction_following_measures_slot_count() -> None:
    handle = dummy({"violations": ["too many"], "verdict": "failed", "confidence": 0.6})
    verdict = asyncio.run(verify(handle, "instruction_following", drake("Tea", "Coffee", "Water")))
    assert verdict.status == FAILED
    assert verdict.reasons == ("drake has 2 slots, the draft has 3 texts", "too many")


def test_instruction_following_offline_wants_the_requested_style(offline: LMHandle) -> None:
    plain = drake("Tea", "Coffee", style="sarcastic")
    verdict = asyncio.run(verify(offline, "instruction_following", plain))
    assert verdict.status == FAILED
    assert verdict.reasons == ("the requested style 'sarcastic' does not show in the texts",)
    styled = drake("Tea", "Coffee, sarcastically", style="sarcastic")
    assert asyncio.run(verify(offline, "instruction_following", styled)).status == PASSED
    aimed = drake("Tea", "Coffee", audience="nurses")
    assert (
        "audience 'nurses'"
        in asyncio.run(verify(offline, "instruction_following", aimed)).reasons[0]
    )


def test_offline_slot_listing_shows_overlong_extra_texts(offline: LMHandle) -> None:
    """The offline verifier reads the same listing a real model does: an extra text has max 0."""
    draft = drake("Tea", "Coffee", "Water")
    assert draft.slot_texts().splitlines()[-1] == "3. extra (max 0 chars): Water"
    verdict = asyncio.run(verify(offline, "instruction_following", draft))
    assert verdict.reasons[0] == "drake has 2 slots, the draft has 3 texts"
    assert "slot 'extra' has 5 chars, max 0" in verdict.reasons


@pytest.mark.parametrize(
    "answer",
    [
        {"concerns": [], "verdict": "maybe", "confidence": 0.9},
        {"concerns": [], "verdict": "passed", "confidence": "very high"},
        {"concerns": [], "verdict": "passed", "confidence": "nan"},
        {"concerns": "none at all", "verdict": "passed"},
        {"answer": "Looks fine to me!"},
    ],
)
def test_garbage_appropriateness_fails_closed(answer: dict[str, Any]) -> None:
    handle = dummy(answer, answer)  # the second one answers the JSON adapter fallback
    verdict = asyncio.run(verify(handle, "appropriateness", drake("Tea", "Coffee")))
    assert (verdict.status, verdict.confidence) == (FAILED, 1.0)
    assert verdict.reasons[0].startswith("unusable verifier output")


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_empty_output_fails_closed(verifier: str) -> None:
    handle, engine = canned(lambda: "")
    verdict = asyncio.run(verify(handle, verifier, drake("Tea", "Coffee")))
    assert verdict.status == FAILED and engine.calls == 2  # ChatAdapter, then JSON fallback
    assert verdict.tokens == 4  # what the useless answers cost is still counted


def test_lm_failure_raises_never_a_verdict() -> None:
    def fail() -> str:
        raise TimeoutError("read timed out", provider="canned")

    handle, engine = canned(fail)
    with pytest.raises(LMTimeoutError) as failed:
        asyncio.run(verify(handle, "appropriateness", drake("Tea", "Coffee")))
    assert (failed.value.code, engine.calls) == ("timeout", 1)
    assert failed.value.__notes__ == ["memesys stage: appropriateness"]
    assert Verdict.unavailable("appropriateness", "timed out\n\nTo fix: wait") == Verdict(
        "appropriateness", UNAVAILABLE, 0.0, ("timed out",), 0
    )


def test_model_verdicts_are_read_and_clamped() -> None:
    handle = dummy(
        {
            "flagged_claims": ["  'Tea was invented\nin 1610' "],
            "verdict": "failed",
            "confidence": 1.7,
        }
    )
    with dspy.context(adapter=STRICT):
        verdict = asyncio.run(verify(handle, "factuality", drake("Tea", "Coffee")))
    assert verdict == Verdict("factuality", FAILED, 1.0, ("'Tea was invented in 1610'",), 0)


def test_unknown_verifier_and_format() -> None:
    with pytest.raises(ValueError, match="unknown verifier 'humour'"):
        asyncio.run(verify(dummy(), "humour", drake("Tea", "Coffee")))
    with pytest.raises(UnknownFormat):
        Draft("tea", "nyan-cat", ("a", "b"))


@pytest.mark.usefixtures("dspy_history")
def test_offline_verifiers_answer_through_the_strict_chat_adapter(offline: LMHandle) -> None:
    draft = drake("Tea", "Coffee")
    with dspy.context(adapter=STRICT):
        before = len(offline.lm.history)
        verdicts = [asyncio.run(verify(offline, name, draft)) for name in VERIFIERS]
    assert len(offline.lm.history) - before == 3  # one call each: nothing fell back
    with dspy.context(adapter=dspy.JSONAdapter()):
        in_json = [asyncio.run(verify(offline, name, draft)) for name in VERIFIERS]
    assert [replace(v, tokens=0) for v in in_json] == [replace(v, tokens=0) for v in verdicts]
