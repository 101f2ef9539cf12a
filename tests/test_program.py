"""The meme program: stage wiring, validation of model output, usage, and the LM factory."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import dspy
import pytest
from dspy.utils import DummyLM
from dspy.utils.exceptions import LMError

from memesys.domain.formats import CATALOGUE, UnknownFormat, get_format
from memesys.offline.lm import MODEL, PROVIDER
from memesys.pipeline.lm import OPENAI_COMPATIBLE, LMHandle, build_lm, offline_lm
from memesys.pipeline.writing import (
    REQUESTED,
    Caption,
    CaptionError,
    catalogue_text,
    choose_format,
    requested,
    slots_text,
    write_caption,
    write_texts,
)


def dummy(*answers: dict[str, Any]) -> LMHandle:
    return LMHandle(lm=DummyLM(list(answers)), provider="dummy", model="dummy")


def test_valid_outputs_parse() -> None:
    handle = dummy(
        {"format_name": "drake", "reason": "a clear preference"}, {"captions": ["Tea", "Coffee"]}
    )
    caption = asyncio.run(write_caption(handle, "hot drinks"))
    assert caption == Caption(
        format="drake", texts=("Tea", "Coffee"), reason="a clear preference", tokens=0
    )


def test_format_name_spelling_is_forgiven() -> None:
    handle = dummy(
        {"format_name": " Distracted Boyfriend", "reason": "temptation"},
        {"captions": ["Me", "Work", "Memes"]},
    )
    assert asyncio.run(write_caption(handle, "work")).format == "distracted-boyfriend"


@pytest.mark.usefixtures("dspy_history")
def test_requested_format_skips_selection() -> None:
    handle = dummy({"captions": ["Tea", "Coffee"]})
    caption = asyncio.run(write_caption(handle, "hot drinks", format="drake"))
    assert (caption.format, caption.reason) == ("drake", REQUESTED)
    assert len(handle.lm.history) == 1


@pytest.mark.usefixtures("dspy_history")
def test_requested_unknown_format_fails_before_any_lm_call() -> None:
    handle = dummy()
    with pytest.raises(UnknownFormat):
        asyncio.run(write_caption(handle, "cats", format="nyan-cat"))
    assert handle.lm.history == []


def test_unknown_format_from_the_model() -> None:
    handle = dummy({"format_name": "nyan-cat", "reason": "rainbows"})
    with pytest.raises(CaptionError, match=r"nyan-cat.*not in the catalogue"):
        asyncio.run(write_caption(handle, "cats"))


@pytest.mark.parametrize(
    "captions, message",
    [
        (["Tea", "Coffee", "Water"], "drake needs 2 texts \\(reject, prefer\\), the model wrote 3"),
        (["Tea"], "needs 2 texts"),
        (["Tea", "x" * 71], "slot 'prefer' has 71 chars, max 70"),
        (["Tea", "   "], "slot 'prefer' is empty"),
    ],
)
def test_bad_captions_from_the_model(captions: list[str], message: str) -> None:
    handle = dummy({"captions": captions})
    with pytest.raises(CaptionError, match=message):
        asyncio.run(write_caption(handle, "drinks", format="drake"))


def test_unparseable_output_is_a_caption_error() -> None:
    handle = dummy({"captions": "not a list at all"})
    with dspy.context(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        with pytest.raises(CaptionError, match="unparseable"):
            asyncio.run(write_caption(handle, "drinks", format="drake"))


def test_empty_topic() -> None:
    with pytest.raises(CaptionError, match="topic is empty"):
        asyncio.run(write_caption(dummy(), "  \n "))


def test_prompt_listings() -> None:
    assert catalogue_text().splitlines()[0] == f"drake: {CATALOGUE['drake'].description}"
    assert slots_text(get_format("drake")).splitlines() == [
        "1. reject (max 70 chars): the thing Drake waves away",
        "2. prefer (max 70 chars): the thing Drake approves of",
    ]


@pytest.mark.parametrize(
    "topic",
    ["monday meetings", "rust borrow checker", "coffee", "production outage", "cats vs dogs"],
)
@pytest.mark.usefixtures("dspy_history")
def test_offline_end_to_end(topic: str) -> None:
    handle = offline_lm()
    caption = asyncio.run(write_caption(handle, topic, style="sarcastic", seed=7))
    fmt = get_format(caption.format)
    assert len(caption.texts) == len(fmt.slots)
    assert all(len(t) <= s.max_chars for t, s in zip(caption.texts, fmt.slots))
    assert caption.reason
    assert caption.tokens == sum(entry["usage"]["total_tokens"] for entry in handle.lm.history)
    assert caption.tokens > 0


@pytest.mark.usefixtures("dspy_history")
def test_stages_run_alone_and_count_their_own_tokens() -> None:
    select_lm, write_lm = offline_lm(), offline_lm()
    choice = asyncio.run(choose_format(select_lm, "production outage", seed=1))
    caption = asyncio.run(write_texts(write_lm, "production outage", choice, seed=1))
    assert choice.tokens == select_lm.lm.history[-1]["usage"]["total_tokens"] > 0
    assert caption.tokens == write_lm.lm.history[-1]["usage"]["total_tokens"] > 0
    assert (caption.format, caption.reason) == (choice.format.name, choice.reason)
    whole = asyncio.run(write_caption(offline_lm(), "production outage", seed=1))
    assert whole == Caption(
        caption.format, caption.texts, caption.reason, choice.tokens + caption.tokens
    )
    assert requested("Drake").tokens == 0 and requested("drake").reason == REQUESTED


def test_usage_rolls_up_into_the_callers_tracker() -> None:
    handle = offline_lm()
    with dspy.track_usage() as tracker:
        caption = asyncio.run(write_caption(handle, "coffee"))
    usage = tracker.get_total_tokens()[f"{PROVIDER}/{MODEL}"]
    assert usage["total_tokens"] == caption.tokens


@pytest.mark.usefixtures("dspy_history")
def test_concurrent_calls_keep_their_own_lm() -> None:
    offline = offline_lm()
    canned = LMHandle(
        lm=DummyLM({"hot drinks": {"captions": ["Tea", "Coffee"]}}), provider="dummy", model="dummy"
    )

    def run(i: int) -> Caption:
        handle = canned if i % 2 else offline
        return asyncio.run(write_caption(handle, "hot drinks", format="drake", seed=i))

    with ThreadPoolExecutor(max_workers=8) as pool:
        captions = list(pool.map(run, range(16)))
    assert all((c.texts == ("Tea", "Coffee")) == bool(i % 2) for i, c in enumerate(captions))
    assert len(offline.lm.history) == len(canned.lm.history) == 8


@pytest.mark.parametrize("model, key", [("gpt-4o-mini", ""), ("offline", "sk-test")])
def test_build_lm_offline(model: str, key: str) -> None:
    handle = build_lm(model, key, "http://unused", 5.0)
    assert (handle.provider, handle.model) == (PROVIDER, MODEL)
    assert handle.lm.cache is False and handle.lm.num_retries == 0


def test_build_lm_openai_compatible_settings() -> None:
    handle = build_lm("gpt-4o-mini", "sk-test", "", 7.5)
    assert (handle.provider, handle.model) == (OPENAI_COMPATIBLE, "gpt-4o-mini")
    assert handle.lm.model == "openai/gpt-4o-mini"
    assert handle.lm.cache is False and handle.lm.num_retries == 0
    # The engine owns the connection (memesys.llm): DSPy holds no timeout, endpoint or retries.
    assert handle.lm.engine.policy.timeout_s == 7.5
    assert handle.lm.engine.base_url == "https://api.openai.com/v1"
    assert not {"timeout", "api_base", "max_retries"} & set(handle.lm.kwargs)


class FakeOpenAI(BaseHTTPRequestHandler):
    """A chat-completions endpoint answering the two memesys signatures (or failing)."""

    requests: ClassVar[list[dict[str, Any]]] = []
    fail = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers["Authorization"], "body": body}
        )
        if type(self).fail:
            self.send_error(500, "boom")
            return
        outputs = body["messages"][0]["content"].split("Your output fields are:")[1]
        content = (
            '[[ ## captions ## ]]\n["Tea", "Coffee"]'
            if "`captions`" in outputs
            else "[[ ## format_name ## ]]\ndrake\n\n[[ ## reason ## ]]\nfits"
        )
        payload = json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {
                            "role": "assistant",
                            "content": content + "\n\n[[ ## completed ## ]]",
                        },
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def endpoint() -> Iterator[str]:
    FakeOpenAI.requests, FakeOpenAI.fail = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_end_to_end(endpoint: str) -> None:
    caption = asyncio.run(
        write_caption(build_lm("test-model", "sk-test", endpoint, 5.0), "hot drinks")
    )
    assert caption == Caption(format="drake", texts=("Tea", "Coffee"), reason="fits", tokens=220)
    assert [(r["path"], r["auth"], r["body"]["model"]) for r in FakeOpenAI.requests] == [
        ("/v1/chat/completions", "Bearer sk-test", "test-model")
    ] * 2


def test_openai_compatible_makes_one_attempt(endpoint: str) -> None:
    FakeOpenAI.fail = True
    with pytest.raises(LMError) as failed:
        asyncio.run(
            write_caption(
                build_lm("test-model", "sk-test", endpoint, 5.0), "hot drinks", format="drake"
            )
        )
    assert len(FakeOpenAI.requests) == 1
    assert failed.value.__notes__ == ["memesys stage: write"]
