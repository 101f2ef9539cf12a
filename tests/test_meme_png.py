"""``POST /v1/memes`` with ``Accept: image/png`` answers the picture itself (for curl), the
gateway in process against the scripted directory; errors stay JSON."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from memesys.domain.messages import GenerateMeme, GetImage, MemeImage, SubmitTask
from memesys.http.app import Gateway
from memesys.http.negotiation import wants_png
from memesys.tree.paths import STORE
from tests.support.gateway import GATEWAY, FakeDirectory, a_meme, error_of

PNG = b"\x89PNG\r\n\x1a\nfake"
DIGEST = hashlib.sha256(PNG).hexdigest()


@pytest.fixture
def directory() -> FakeDirectory:
    directory = FakeDirectory()
    directory.script(GenerateMeme, lambda order: a_meme("m7"))
    directory.script(GetImage, MemeImage(DIGEST, PNG))
    return directory


@pytest.fixture
async def http(aiohttp_client: Callable, directory: FakeDirectory) -> Any:
    return await aiohttp_client(Gateway(GATEWAY, directory).app())


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        (None, False),
        ("", False),
        ("image/png", True),
        ("IMAGE/PNG", True),
        ("image/png, application/json;q=0.5", True),
        ("application/json;q=0.9, image/png", True),
        ("image/png, application/json", False),  # a tie: the default
        ("image/png;q=0.5, application/json", False),
        ("image/png;q=0", False),
        ("image/png;q=zero", False),
        ("*/*", False),
        ("image/*", False),
        ("text/html", False),
    ],
)
def test_the_png_is_asked_for_only_by_name_and_above_json(accept: str | None, png: bool) -> None:
    assert wants_png(accept) is png


async def test_accept_image_png_answers_the_picture_with_the_meme_id(http, directory) -> None:
    response = await http.post(
        "/v1/memes", json={"topic": "mondays"}, headers={"Accept": "image/png"}
    )
    assert response.status == 201
    assert response.content_type == "image/png"
    assert await response.read() == PNG
    assert response.headers["X-Meme-Id"] == "m7"
    assert response.headers["Location"] == "/v1/memes/m7"
    assert response.headers["ETag"] == f'"{DIGEST}"'
    assert response.headers["X-Trace-Id"]
    path, message, _, idempotent = directory.asked[-1]
    assert (path, message, idempotent) == (STORE, GetImage("m7"), True)


async def test_without_it_the_answer_is_the_memes_json(http) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "image/png, application/json"}):
        response = await http.post("/v1/memes", json={"topic": "mondays"}, headers=headers)
        assert response.status == 201 and response.content_type == "application/json"
        assert (await response.json())["id"] == "m7"
        assert "X-Meme-Id" not in response.headers


async def test_async_with_accept_image_png_is_406_and_no_task_is_made(http, directory) -> None:
    directory.script(SubmitTask, "task1")
    response = await http.post(
        "/v1/memes?async=true", json={"topic": "x"}, headers={"Accept": "image/png"}
    )
    error = await error_of(response, 406, "not_acceptable")
    assert "async=true" in error["message"]
    assert not [m for _, m, _, _ in directory.asked if isinstance(m, SubmitTask)]


async def test_errors_stay_json(http, directory) -> None:
    png = {"Accept": "image/png"}
    await error_of(await http.post("/v1/memes", json={}, headers=png), 422, "invalid_field")
    directory.script(GetImage, None)  # the meme is made, its picture is gone (erased since)
    error = await error_of(
        await http.post("/v1/memes", json={"topic": "x"}, headers=png), 404, "not_found"
    )
    assert "m7" in error["message"]
