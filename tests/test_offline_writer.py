"""The offline writer, driven through DSPy's real adapters exactly as the daemon drives it."""

from __future__ import annotations

import asyncio
import re

import dspy
import pytest
from dspy.lm15 import Request, Response
from dspy.utils.exceptions import LMError

from memesys.domain.formats import CATALOGUE
from memesys.offline.lm import MODEL, PROVIDER, AsyncOfflineLM, OfflineLM
from memesys.offline.templates import TEMPLATES
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import LMHandle, offline_lm
from memesys.pipeline.refinement import refine
from memesys.pipeline.scoring import score
from memesys.pipeline.signatures import WriteCaption
from memesys.pipeline.verification import VERIFIERS, verify
from memesys.pipeline.writing import write_caption
from tests.support.engines import engine_lm

TOPICS = (
    "monday meetings",
    "rust borrow checker",
    "coffee",
    "production outage",
    "learning javascript frameworks",
)
LONG_TOPIC = "the quarterly planning meeting that could definitely have been a short email"


class SpyEngine(OfflineLM):
    """The offline engine, recording what DSPy sent and what came back."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Response]] = []

    def complete(self, request: Request) -> Response:
        response = super().complete(request)
        self.calls.append((request, response))
        return response


def spied() -> tuple[LMHandle, SpyEngine]:
    engine = SpyEngine()
    lm = engine_lm(f"{PROVIDER}/{MODEL}", engine)
    return LMHandle(lm=lm, provider=PROVIDER, model=MODEL), engine


@pytest.fixture(scope="module")
def handle() -> LMHandle:
    return offline_lm()


def test_names() -> None:
    assert (PROVIDER, MODEL) == ("offline", "offline-writer-1")


def test_same_inputs_same_output() -> None:
    first, second = offline_lm(), offline_lm()
    for seed in range(3):
        assert asyncio.run(write_caption(first, "tea", seed=seed)) == asyncio.run(
            write_caption(second, "tea", seed=seed)
        )


def test_same_request_same_response_text() -> None:
    handle, engine = spied()
    asyncio.run(write_caption(handle, "coffee", format="drake", seed=4))
    request, response = engine.calls[0]
    assert OfflineLM().complete(request).text == response.text


@pytest.mark.parametrize("format", [None, "drake", "this-is-fine"])
def test_seeds_vary_the_caption(handle: LMHandle, format: str | None) -> None:
    captions = {
        asyncio.run(write_caption(handle, "monday meetings", format=format, seed=s)).texts
        for s in range(10)
    }
    assert len(captions) >= 3


@pytest.mark.parametrize("topic", TOPICS)
def test_topic_words_appear(handle: LMHandle, topic: str) -> None:
    for seed in range(3):
        text = " ".join(asyncio.run(write_caption(handle, topic, seed=seed)).texts).lower()
        assert any(word in text for word in topic.split()), text


def test_every_template_mentions_the_topic() -> None:
    assert set(TEMPLATES) == set(CATALOGUE)
    for name, templates in TEMPLATES.items():
        for template in templates:
            assert len(template) == len(CATALOGUE[name].slots), (name, template)
            assert re.search(r"\{(topic|Topic|mock)\}", " ".join(template)), (name, template)


@pytest.mark.parametrize(
    "topic, style, audience",
    [
        ("cats", None, None),
        ("kubernetes", "sarcastic", "developers"),
        (LONG_TOPIC, "absurdly wholesome", "the whole engineering department"),
    ],
)
def test_every_format_fits_its_limits(
    handle: LMHandle, topic: str, style: str | None, audience: str | None
) -> None:
    for name, fmt in CATALOGUE.items():
        for seed in range(2):
            # write_caption validates slot count and max_chars; it raises on any violation.
            caption = asyncio.run(
                write_caption(handle, topic, format=name, style=style, audience=audience, seed=seed)
            )
            assert caption.format == name and all(caption.texts)
            assert len(caption.texts) == len(fmt.slots)


def test_style_and_audience_are_woven_in(handle: LMHandle) -> None:
    for name in CATALOGUE:
        styled = " ".join(
            asyncio.run(write_caption(handle, "cats", format=name, style="wholesome")).texts
        )
        assert "wholesome" in styled.lower(), (name, styled)
        aimed = " ".join(
            asyncio.run(write_caption(handle, "cats", format=name, audience="nurses")).texts
        )
        assert "nurses" in aimed.lower(), (name, aimed)


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("production outage during the deadline", "this-is-fine"),
        ("a trade deal nobody wants", "trade-offer"),
        ("panic before the exam", "panik-kalm-panik"),
    ],
)
def test_selection_follows_keywords(handle: LMHandle, topic: str, expected: str) -> None:
    caption = asyncio.run(write_caption(handle, topic))
    assert caption.format == expected
    assert "shares" in caption.reason


def test_output_goes_through_chat_adapter_parsing() -> None:
    handle, engine = spied()
    strict = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(adapter=strict):
        caption = asyncio.run(write_caption(handle, "coffee", seed=1))
    assert len(engine.calls) == 2  # SelectFormat, then WriteCaption: no parse retries
    select_text, write_text = (response.text for _, response in engine.calls)
    assert select_text.startswith("[[ ## format_name ## ]]")
    assert write_text.rstrip().endswith("[[ ## completed ## ]]")
    parsed = strict.parse(WriteCaption, write_text)
    assert tuple(parsed["captions"]) == caption.texts
    assert f"\n{caption.format}\n" in select_text


def test_answers_the_json_adapter_in_json() -> None:
    handle, engine = spied()
    with dspy.context(adapter=dspy.JSONAdapter()):
        caption = asyncio.run(write_caption(handle, "coffee", format="drake", seed=2))
    assert engine.calls[-1][1].text.startswith('{"captions": [')
    assert caption.format == "drake" and len(caption.texts) == 2


@pytest.mark.usefixtures("dspy_history")
def test_usage_is_reported_as_chars_over_four() -> None:
    handle, engine = spied()
    caption = asyncio.run(write_caption(handle, "coffee", format="drake"))
    request, response = engine.calls[0]
    prompt_chars = len(request.system) + sum(len(m.text) for m in request.messages)
    assert response.usage.input_tokens == (prompt_chars + 3) // 4
    assert response.usage.output_tokens == (len(response.text) + 3) // 4
    assert caption.tokens == response.usage.total_tokens
    assert handle.lm.history[-1]["usage"]["total_tokens"] == caption.tokens


def test_unknown_signature_is_refused(handle: LMHandle) -> None:
    class Answer(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    with dspy.context(lm=handle.lm), pytest.raises(LMError, match="cannot produce"):
        dspy.Predict(Answer)(question="why?")


def test_async_engine_through_dspy(handle: LMHandle) -> None:
    async def run() -> dspy.Prediction:
        with dspy.context(lm=handle.lm):
            return await dspy.Predict(WriteCaption).acall(
                topic="coffee",
                format_name="drake",
                slots="1. reject (max 70 chars): x\n2. prefer (max 70 chars): y",
                style="",
                audience="",
                seed=0,
            )

    assert len(asyncio.run(run()).captions) == 2
    assert isinstance(handle.lm._async_engine_spec, AsyncOfflineLM)


def test_stream_ends_with_the_whole_answer() -> None:
    handle, engine = spied()
    asyncio.run(write_caption(handle, "coffee", format="drake"))
    request, response = engine.calls[0]
    events = list(OfflineLM().stream(request))
    assert events[-1].type == "end"
    assert "".join(e.delta.text for e in events if e.type == "delta") == response.text


def test_every_judging_signature_answers_in_one_strict_call() -> None:
    """Verifiers, scorer and refiner come back in ChatAdapter sections the strict adapter
    parses at once (no JSON fallback), and the same request gets the same text."""
    handle, engine = spied()
    draft = Draft("coffee", "drake", ("Decaf", "Espresso at 2am"), "sarcastic", "developers")
    strict = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(adapter=strict):
        for name in VERIFIERS:
            asyncio.run(verify(handle, name, draft))
        asyncio.run(score(handle, draft))
        asyncio.run(refine(handle, draft, "Fix: add a twist."))
    assert len(engine.calls) == 5
    for request, response in engine.calls:
        assert response.text.rstrip().endswith("[[ ## completed ## ]]")
        assert OfflineLM().complete(request).text == response.text


def test_judging_signatures_answer_the_json_adapter() -> None:
    handle, engine = spied()
    draft = Draft("coffee", "drake", ("Decaf", "Espresso at 2am"))
    with dspy.context(adapter=dspy.JSONAdapter()):
        scores = asyncio.run(score(handle, draft))
        caption = asyncio.run(refine(handle, draft, "Fix: end on a punchline mark."))
    assert engine.calls[0][1].text.startswith('{"critique": ')
    assert 0 < scores.overall <= 1 and caption.texts[-1].endswith("!")
