"""How the gateway serves the page and its files (in process, no actor system): the security
headers, revalidation by ETag, nothing inline for the Content-Security-Policy to forbid, and
no file the page does not use. tests/test_browser.py drives the page itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from importlib import resources
from typing import Any

import pytest

from memesys.http.app import Gateway
from tests.support.gateway import GATEWAY, FakeDirectory

STATIC = resources.files("memesys.http").joinpath("static")
FILES = {"index.html", "app.js", "app.css", "favicon.svg"}


@pytest.fixture
async def client(aiohttp_client: Callable) -> Any:
    return await aiohttp_client(Gateway(GATEWAY, FakeDirectory()).app())


class Inline(HTMLParser):
    """What the page's HTML references, and anything inline in it."""

    def __init__(self) -> None:
        super().__init__()
        self.references: set[str] = set()
        self.inline: list[str] = []
        self.inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.inline += [f"<{tag} {name}>" for name in named if name == "style" or name[:2] == "on"]
        self.references.update(v for k, v in named.items() if k in ("src", "href") and v)
        if tag in ("script", "style"):
            self.inside = tag

    def handle_endtag(self, tag: str) -> None:
        self.inside = None

    def handle_data(self, data: str) -> None:
        if self.inside and data.strip():
            self.inline.append(f"<{self.inside}> {data.strip()[:40]}")


async def test_the_page_and_its_files_carry_the_security_headers(client) -> None:
    types = {
        "/": "text/html",
        "/static/app.js": "text/javascript",
        "/static/app.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
    }
    for path, content_type in types.items():
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == content_type
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        assert re.fullmatch(r'"[0-9a-f]{64}"', response.headers["ETag"])


async def test_a_browser_that_holds_the_file_is_answered_304(client) -> None:
    first = await client.get("/static/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag and again.headers["X-Frame-Options"] == "DENY"
    other = await client.get("/static/app.js", headers={"If-None-Match": '"' + "0" * 64 + '"'})
    assert other.status == 200 and await other.read() == await first.read()


@pytest.mark.parametrize("name", ["missing.js", "index.html", "..%2Fpage.py", "..%2F..%2Fpy.typed"])
async def test_only_the_page_files_are_served(client, name) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


def test_nothing_is_inline_and_every_file_is_used() -> None:
    assert {f.name for f in STATIC.iterdir()} == FILES
    page = Inline()
    page.feed(STATIC.joinpath("index.html").read_text())
    assert page.inline == []  # the Content-Security-Policy would refuse it
    used = {ref.removeprefix("/static/") for ref in page.references}
    assert used == FILES - {"index.html"}
    script = STATIC.joinpath("app.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script  # text is set as text
